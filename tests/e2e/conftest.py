"""Simulated vLLM servers and gateways in front of them, all real processes on loopback."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from gateway.sim.process import start_sim
from tests.support import GatewayProcess, write_config

# A speed-up keeps generation fast in tests while keeping batching and timing realistic in shape.
SPEED = "20"

SMALL = "Qwen/Qwen3-1.7B"
MEDIUM = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "Qwen/Qwen3-32B"


@pytest.fixture(scope="session")
def sims():
    started = []
    try:
        for name, params, reasoning, seed in ((SMALL, 1.7, "qwen3", 1), (MEDIUM, 8, "none", 2), (LARGE, 32, "qwen3", 3)):
            started.append(
                start_sim(["--model", name, "--params-b", str(params), "--reasoning", reasoning,
                           "--speed", SPEED, "--seed", str(seed)])
            )
        yield dict(zip((SMALL, MEDIUM, LARGE), started))
    finally:
        for sim in started:
            sim.stop()


def backend_entry(name: str, sim, **extra) -> dict:
    return {"name": name, "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}, **extra}


def base_config(tmp_path, backends: list[dict], **sections) -> dict:
    config = {
        "server": {"health_interval_s": 0.2, "load_interval_s": 0.2},
        "backends": backends,
        "ledger": {"path": str(tmp_path / "usage.db")},
    }
    config.update(sections)
    return config


@pytest.fixture(scope="session")
def gateway(sims, tmp_path_factory):
    """One gateway with the shipped default policy in front of the three simulators."""
    tmp = tmp_path_factory.mktemp("gw")
    backends = [backend_entry(n.split("/")[-1].lower(), s) for n, s in sims.items()]
    path = write_config(tmp, base_config(tmp, backends))
    with GatewayProcess(path) as gw:
        yield gw


def sim_counter(sim, name: str, **labels) -> float:
    """Sum of a counter on a simulator's /metrics over the series matching ``labels``."""
    total = 0.0
    for line in httpx.get(f"{sim.url}/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def twin_backends(tmp_path):
    """Two instant simulators serving the same model behind one gateway whose health checks are
    slow, so the gateway tries ``a`` first and learns of a failure only from the request itself."""
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as a, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as b:
        config = base_config(tmp_path, [backend_entry("a", a), backend_entry("b", b)],
                             server={"health_interval_s": 30, "load_interval_s": 30})
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            yield gw, a, b
