"""deploy/compose/compose.yaml: valid Compose, every file it mounts exists, and the pieces fit.

The gateway configs it mounts are loaded with the gateway's own loader, the simulator
commands are parsed by the simulator's own argument parser, and the wiring between
services (URLs, GPUs, Prometheus targets) is checked against the Compose services.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from gateway.config import load_config
from gateway.policy.schema import load_policy
from gateway.routing.ability import facts_from_name
from gateway.sim.cli import add_arguments as sim_arguments
from gateway.yamlfile import read_yaml
from tests.deploy.artefacts import COMPOSE, PROMETHEUS_YML, need_tool

HERE = COMPOSE.parent
PROFILES = ("gpu", "sim")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services_in(compose: dict, profile: str) -> dict[str, dict]:
    """The services `docker compose --profile PROFILE up` starts."""
    return {n: s for n, s in compose["services"].items() if not s.get("profiles") or profile in s["profiles"]}


def host_path(source: str) -> Path:
    return (HERE / source).resolve()


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def in_container_to_host(service: dict, path: str) -> Path:
    """Map a path inside the container back to the repo file a bind mount puts there."""
    for source, target in bind_mounts(service):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return host_path(source) / Path(path).relative_to(target)
    raise AssertionError(f"{path} is not under any bind mount of the service")


def vllm_args(service: dict) -> dict[str, str]:
    args = {}
    for item in service["command"]:
        key, _, value = item.partition("=")
        args[key] = value
    return args


def test_compose_config_is_valid_for_each_profile():
    # docker-compose (Debian's, v1.29) validates against the Compose file schema offline;
    # no Docker engine is needed for `config`.
    tool = need_tool("docker-compose", "apt-get install docker-compose")
    for profile in PROFILES:
        result = subprocess.run([tool, "-f", str(COMPOSE), "--profile", profile, "config", "-q"],
                                capture_output=True, text=True, cwd=HERE)  # fmt: skip
        assert result.returncode == 0, f"profile {profile}: {result.stderr}"


def test_every_mounted_file_and_build_context_exists(compose):
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert host_path(source).exists(), f"{name} mounts {source}, which does not exist"
        build = service.get("build")
        if build:
            context = host_path(build["context"])
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
             if not v.startswith((".", "/"))}  # fmt: skip
    assert named <= set(compose.get("volumes", {})), named - set(compose.get("volumes", {}))


def test_gpu_profile_runs_two_vllm_sizes_on_their_own_gpus(compose):
    services = services_in(compose, "gpu")
    vllm = {n: s for n, s in services.items() if "vllm/vllm-openai" in s.get("image", "")}
    assert len(vllm) >= 2
    sizes, gpus = set(), []
    for name, service in vllm.items():
        args = vllm_args(service)
        sizes.add(facts_from_name(args["--model"]).total_b)
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        gpus += [g for d in devices for g in d["device_ids"]]
    assert len(sizes) == len(vllm), "the vLLM servers should serve different model sizes"
    assert len(gpus) == len(set(gpus)), "two vLLM servers share a GPU"
    reasoning = [vllm_args(s) for s in vllm.values() if vllm_args(s).get("--reasoning-parser") == "qwen3"]
    assert reasoning and all("Qwen3" in a["--model"] for a in reasoning)
    dcgm = [s for s in services.values() if "dcgm-exporter" in s.get("image", "")]
    assert len(dcgm) == 1 and dcgm[0]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    # Its default collection interval (30 s) is too coarse to split energy between requests.
    command = dcgm[0].get("command", [])
    assert "-c" in command and int(command[command.index("-c") + 1]) <= 1000, command


def test_sim_profile_has_no_gpu_and_valid_simulator_commands(compose):
    services = services_in(compose, "sim")
    assert not [n for n, s in services.items() if "vllm/vllm-openai" in s.get("image", "") or "deploy" in s]
    assert not [n for n, s in services.items() if "dcgm-exporter" in s.get("image", "")]
    gateway_image = {s["image"] for s in services.values() if s.get("command", [""])[0] == "serve"}
    sims = {n: s for n, s in services.items() if s.get("command", [""])[0] == "sim"}
    assert len(sims) >= 2
    parser = argparse.ArgumentParser()
    sim_arguments(parser)
    for name, service in sims.items():
        args = parser.parse_args(service["command"][1:])  # the simulator's own parser: exits on a bad flag
        assert args.host == "0.0.0.0", f"{name} must listen beyond loopback inside its container"
        assert service["image"] in gateway_image, f"{name} must run the gateway's image"


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_config_of_each_profile_loads_and_points_at_its_services(compose, profile):
    services = services_in(compose, profile)
    gateways = {n: s for n, s in services.items() if s.get("command", [""])[0] == "serve"}
    assert len(gateways) == 1, gateways
    name, gateway = next(iter(gateways.items()))
    command = gateway["command"]
    config_in_container = command[command.index("--config") + 1]
    config_path = in_container_to_host(gateway, config_in_container)
    config = load_config(config_path)  # the gateway's own validation: unknown keys are errors
    assert config.server.host == "0.0.0.0"

    # Policy: next to the config, valid for the gateway's policy loader.
    policy = Path(config.resolve(config.policy.path))
    assert policy.is_file(), policy
    load_policy(read_yaml(policy))

    # The ledger in the Compose PostgreSQL, waited for until it is healthy; the password from
    # the environment (PGPASSWORD), the same variable the database is created with.
    ledger_url = config.ledger.database_url()
    assert ledger_url is not None, "the gateway config must select the PostgreSQL ledger"
    url = urlparse(ledger_url)
    assert url.scheme in ("postgresql", "postgres") and url.password is None, "no password in the config file"
    postgres = services[url.hostname]
    assert re.match(r"^\$\{POSTGRES_IMAGE:-postgres:\d+", postgres["image"]), postgres["image"]
    assert (url.port or 5432) == 5432
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    assert gateway["environment"]["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert gateway["depends_on"][url.hostname] == {"condition": "service_healthy"}

    # Budgets shared through the Compose Redis.
    assert config.budgets.store == "redis"
    assert urlparse(config.budgets.redis_url).hostname in services

    for backend in config.backends:
        host = urlparse(backend.url).hostname
        assert host in services, f"backend {backend.name}: {host} is not a service of profile {profile}"
        upstream = services[host]
        meter = backend.meter
        assert meter.type == "dcgm", backend.name
        meter_url = urlparse(meter.url)
        if profile == "gpu":
            args = vllm_args(upstream)
            assert urlparse(backend.url).port == int(args["--port"])
            assert args["--model"] in config.models, f"{args['--model']} has no entry in models:"
            assert "dcgm-exporter" in services[meter_url.hostname]["image"]
            device_ids = [g for d in upstream["deploy"]["resources"]["reservations"]["devices"] for g in d["device_ids"]]
            assert meter.select == {"gpu": device_ids}, f"{backend.name} meters GPUs {meter.select}, runs on {device_ids}"
        else:
            sim_cmd = upstream["command"]
            assert sim_cmd[0] == "sim"
            assert sim_cmd[sim_cmd.index("--model") + 1] in config.models
            assert (meter_url.hostname, meter_url.path) == (host, "/dcgm/metrics"), meter.url
            assert urlparse(backend.url).port == int(sim_cmd[sim_cmd.index("--port") + 1])


def test_postgres_is_pinned_healthchecked_persistent_and_private(compose):
    postgres = compose["services"]["postgres"]
    assert "profiles" not in postgres, "the ledger is needed in both profiles"
    # An official image, pinned to a major version (its data directory format).
    assert re.fullmatch(r"\$\{POSTGRES_IMAGE:-postgres:\d+(\.\d+)?(-alpine)?\}", postgres["image"]), postgres["image"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready"
    # Over TCP: the socket-only server of the first start's initialisation must not pass.
    assert test[test.index("-h") + 1] == "127.0.0.1"
    assert test[test.index("-U") + 1] == postgres["environment"]["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == postgres["environment"]["POSTGRES_DB"]
    data = [v for v in postgres["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data"]
    assert data and data[0].split(":")[0] in compose["volumes"], "the database must live on a named volume"
    assert "ports" not in postgres, "PostgreSQL is for the gateway only: not published on the host"
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD"), "the password is a variable"


@pytest.mark.parametrize("profile", PROFILES)
def test_one_password_reaches_postgres_and_the_gateway(profile):
    # Compose's own interpolation: POSTGRES_PASSWORD from the environment (or .env) ends up as
    # the database's password and the gateway's PGPASSWORD.
    tool = need_tool("docker-compose", "apt-get install docker-compose")
    env = {**os.environ, "POSTGRES_PASSWORD": "s3cret-for-the-test"}
    result = subprocess.run([tool, "-f", str(COMPOSE), "--profile", profile, "config"],
                            capture_output=True, text=True, cwd=HERE, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = services_in(yaml.safe_load(result.stdout), profile)
    (gateway,) = [s for s in services.values() if (s.get("command") or [""])[0] == "serve"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-for-the-test"
    assert gateway["environment"]["PGPASSWORD"] == "s3cret-for-the-test"
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_prometheus_finds_every_service_it_should_scrape(compose):
    prometheus = compose["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert in_container_to_host(prometheus, config_flag.split("=", 1)[1]) == PROMETHEUS_YML.resolve()
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    names_by_job = {job["job_name"]: {n for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
                    for job in config["scrape_configs"]}  # fmt: skip
    aliases = {a for s in compose["services"].values() for net in (s.get("networks") or {}).values()
               for a in (net or {}).get("aliases", [])}  # fmt: skip
    every_name = set(compose["services"]) | aliases
    for job, names in names_by_job.items():
        assert names <= every_name, f"job {job} looks up {names - every_name}, no such service"
    scraped = set().union(*names_by_job.values())
    for profile in PROFILES:
        for name, service in services_in(compose, profile).items():
            cmd = service.get("command") or []
            image = service.get("image", "")
            wants = "vllm/vllm-openai" in image or "dcgm-exporter" in image or (cmd and cmd[0] in ("sim", "serve"))
            net_aliases = set((service.get("networks") or {}).get("default", {}).get("aliases", []) or [])
            if wants:
                assert name in scraped or net_aliases & scraped, f"{name} ({profile}) is never scraped"
    # Both profiles' gateways answer to the name Prometheus scrapes.
    assert "gateway" in names_by_job["gateway"]
