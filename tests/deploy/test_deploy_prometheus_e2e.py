"""Every query of the dashboard, every recording rule and every alert's query returns data from a real Prometheus.

Two simulated vLLM servers, the gateway in front of them (configured like the Compose
"sim" profile: deploy/compose/config/gateway-sim.yaml and its policy), and Debian's
Prometheus scraping them every second with deploy/prometheus/prometheus.yml's jobs and
deploy/prometheus/rules.yml loaded. A short load goes through the gateway (streaming and
not, auto and explicit models, reasoning on and off, two teams) plus a few requests
straight to a simulator (energy the gateway must call "other"). Then each PromQL
expression is run through Prometheus' HTTP API and must return at least one finite value,
with the template variables set to All and, for each variable, to each of its real values
(at least one of which must return data: a filter on a label the metric lacks would match
nothing). No expression may name a metric that the gateway's /metrics page, or the
simulator's vLLM and DCGM pages (with documented names only), do not carry. The alerts are
loaded too: each one's query without its threshold must return data, and none may fire.
"""

from __future__ import annotations

import concurrent.futures
import copy
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.sim.process import start_sim
from tests.deploy.artefacts import (
    DCGM_DOCUMENTED,
    DEPLOY,
    DOC,
    PROMETHEUS_YML,
    RULES,
    VLLM_DOCUMENTED,
    alert_condition,
    alert_names,
    alerting_rules,
    dashboard_queries,
    exposition_names,
    finite_values,
    metric_names,
    need_tool,
    parse_label_values,
    recorded_names,
    recording_rule_queries,
    recording_rules,
    regex_literal,
    rule_queries,
    substitute,
    variable_queries,
)
from tests.support import GatewayProcess, free_port, wait_until, write_config

SPEED = "50"
SMALL, LARGE = "Qwen/Qwen3-1.7B", "Qwen/Qwen3-32B"
KEYS = {"team-a": "team-a-demo-key", "team-b": "team-b-demo-key"}  # the demo keys of the Compose config
COMPOSE_CONFIG = DEPLOY / "compose" / "config"

# Which test processes stand in for each job of deploy/prometheus/prometheus.yml. The
# dcgm-exporter job needs GPUs: the simulator's DCGM page (job dcgm-sim) takes its place.
JOB_TARGETS = {"gateway": "gateway", "vllm": "sims", "dcgm-sim": "sims", "dcgm-exporter": None}


# --------------------------------------------------------------------------- processes


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data.parent / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(lambda: self.proc.poll() is not None or self._ready(), 30, 0.1, "prometheus")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params) -> dict | list:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def prometheus_config(targets: dict[str, list[str]]) -> dict:
    """deploy/prometheus/prometheus.yml with its DNS discovery replaced by the test's loopback targets."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(JOB_TARGETS), (
        "a scrape job was added or renamed: tell this test which process stands in for it"
    )
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    jobs = []
    for job in config["scrape_configs"]:
        stand_in = JOB_TARGETS[job["job_name"]]
        if stand_in is None:
            continue
        job = copy.deepcopy(job)
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": targets[stand_in]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Simulators, the gateway, Prometheus; a load through them; yields what the tests need."""
    binary = need_tool("prometheus", "apt-get install prometheus")
    tmp = tmp_path_factory.mktemp("prom-e2e")
    sims = {}
    gateway = prometheus = None
    try:
        for seed, (name, params) in enumerate(((SMALL, 1.7), (LARGE, 32))):
            sims[name] = start_sim(["--model", name, "--params-b", str(params), "--reasoning", "qwen3",
                                    "--speed", SPEED, "--seed", str(seed)])  # fmt: skip

        # The Compose sim profile's config, pointed at these processes.
        config = yaml.safe_load((COMPOSE_CONFIG / "gateway-sim.yaml").read_text())
        by_name = {b["name"]: b for b in config["backends"]}
        for backend, model in (("sim-small", SMALL), ("sim-large", LARGE)):
            by_name[backend]["url"] = sims[model].url
            by_name[backend]["meter"]["url"] = f"{sims[model].url}/dcgm/metrics"
        config["server"] = {"host": "127.0.0.1", "port": 0, "health_interval_s": 0.2, "load_interval_s": 0.2}
        config["ledger"] = {"path": str(tmp / "usage.db")}
        config["budgets"] = {"store": "memory"}  # Redis is the Compose/Kubernetes choice; not what is tested here
        (tmp / "policy.yaml").write_text((COMPOSE_CONFIG / "policy.yaml").read_text())
        gateway = GatewayProcess(write_config(tmp, config))

        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(prometheus_config({
            "gateway": [gateway.url.removeprefix("http://")],
            "sims": [s.url.removeprefix("http://") for s in sims.values()],
        })))  # fmt: skip
        prometheus = Prometheus(binary, prom_config, tmp / "tsdb")
        # Discovery hands targets to the scraper every few seconds; load before the first
        # scrapes would leave no increase for rate() to see.
        wait_until(lambda: len(prometheus.api("targets")["activeTargets"]) == 5
                   and all(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"]),
                   30, 0.25, "prometheus scraping every target")  # fmt: skip

        # Two waves a few scrapes apart, so every counter and histogram series exists before
        # it grows and rate()/histogram_quantile() have an increase to work on.
        for wave in range(2):
            if wave:
                time.sleep(3)
            generate_load(gateway.url, sims)
        yield {"prometheus": prometheus, "gateway": gateway, "sims": sims}
    finally:
        if prometheus is not None:
            prometheus.stop()
        if gateway is not None:
            gateway.stop()
        for sim in sims.values():
            sim.stop()


# --------------------------------------------------------------------------- load


def generate_load(url: str, sims: dict) -> None:
    """A few dozen requests of every kind the panels distinguish, a few at a time."""
    jobs = []
    for i in range(12):
        jobs.append(dict(model="auto", stream=i % 3 == 0, team=("team-a", "team-b")[i % 2]))
    for i in range(6):
        jobs.append(dict(model=LARGE, stream=i % 2 == 0, team=("team-a", "team-b")[i % 2]))  # the large_model nudge
    for i in range(4):
        jobs.append(dict(model=SMALL, stream=i % 2 == 1, team="team-a"))
    for i in range(6):  # reasoning on: team-a with reasoning_effort, team-b also needs the header (its section)
        team = ("team-a", "team-b")[i % 2]
        jobs.append(dict(model="auto" if i < 4 else LARGE, stream=i % 2 == 0, team=team, reasoning=True))
    for _ in range(4):
        jobs.append(dict(model="auto", stream=False, team=None))  # no key: the anonymous caller
    jobs.append(dict(model=SMALL, stream=False, team="team-b", endpoint="completions"))
    for i in range(4):  # deferred work, after the interactive traffic above: the batching panels
        jobs.append(dict(model=(SMALL, LARGE)[i % 2], stream=False, team="team-a", flex=True))

    def one(job: dict) -> str | None:
        headers = {}
        if job["team"]:
            headers["authorization"] = f"Bearer {KEYS[job['team']]}"
        if job.get("endpoint") == "completions":
            path, body = "/v1/completions", {"model": job["model"], "prompt": "The three primary colours are",
                                             "max_tokens": 32}  # fmt: skip
        else:
            path = "/v1/chat/completions"
            body = {"model": job["model"], "max_tokens": 96,
                    "messages": [{"role": "user", "content": f"Explain briefly why the sky is blue ({job})."}]}
            if job.get("reasoning"):
                body["reasoning_effort"] = "high"
                headers["x-gateway-reasoning"] = "on"
            if job.get("flex"):
                # long enough to span the energy sampler's ticks even on the sped-up simulator: a
                # request that starts and ends between two has no batch to price a saving from
                body.update(service_tier="flex", max_tokens=1024, min_tokens=1024)
        if job["stream"]:
            body.update(stream=True, stream_options={"include_usage": True})
            with httpx.stream("POST", url + path, json=body, headers=headers, timeout=60) as r:
                text = "".join(r.iter_text())
                if r.status_code != 200 or "data: [DONE]" not in text:
                    return f"{job}: HTTP {r.status_code} {text[-300:]}"
        else:
            r = httpx.post(url + path, json=body, headers=headers, timeout=60)
            if r.status_code != 200:
                return f"{job}: HTTP {r.status_code} {r.text[:300]}"
        return None

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        failures = [f for f in pool.map(one, jobs) if f]
        # Clients that bypass the gateway: the backends' energy the gateway must call "other".
        for sim in sims.values():
            status, _ = sim.request("POST", "/v1/chat/completions", {
                "model": SMALL if sim is sims[SMALL] else LARGE, "max_tokens": 64,
                "messages": [{"role": "user", "content": "Hello from a client that skips the gateway."}]})  # fmt: skip
            assert status == 200
    assert not failures, "requests through the gateway failed:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- helpers


def settle(prometheus: Prometheus, queries: list[tuple[str, str]], timeout: float = 20.0) -> dict[str, str]:
    """Poll until every query returns a finite value or the time is up; return the failures."""
    deadline = time.monotonic() + timeout
    pending = dict(queries)
    while True:
        for where, expr in list(pending.items()):
            if finite_values(prometheus.query(expr)):
                del pending[where]
        if not pending or time.monotonic() > deadline:
            return {where: expr for where, expr in pending.items()}
        time.sleep(0.5)


# --------------------------------------------------------------------------- tests


def test_every_target_is_scraped_and_every_rule_group_is_healthy(stack):
    prometheus = stack["prometheus"]
    targets = prometheus.api("targets")["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {j for j, t in JOB_TARGETS.items() if t}
    wait_until(lambda: all(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"]), 15, 0.5,
               "every target up")  # fmt: skip
    groups = prometheus.api("rules")["groups"]
    loaded = {(r["type"], r["name"]) for g in groups for r in g["rules"]}
    assert loaded == {("recording", n) for n in recorded_names()} | {("alerting", n) for n in alert_names()}
    wait_until(lambda: all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]), 15,
               0.5, "healthy rules")  # fmt: skip


def test_every_recording_rule_returns_data(stack):
    prometheus = stack["prometheus"]
    queries = [(q.where, q.expr) for q in recording_rule_queries()]
    # The recorded series themselves, with each rule's own labels (e.g. quantile, kind).
    for rule in recording_rules():
        matchers = ", ".join(f'{k}="{v}"' for k, v in (rule.get("labels") or {}).items())
        queries.append((f"recorded {rule['record']} {{{matchers}}}", f"{rule['record']}{{{matchers}}}"))
    failures = settle(prometheus, queries)
    assert not failures, "no data from:\n" + "\n".join(f"{w}: {e}" for w, e in failures.items())


def test_every_alert_reads_real_series_and_none_fires(stack):
    # An alert over a misspelled metric, a label the series lack or a wrong function is never
    # true, and says nothing: it looks exactly like a healthy ledger. So each alert's query is
    # run without its comparison (`increase(gateway_ledger_rows_dropped_total[10m])`, not
    # `... > 0`) and must return a finite value: it reads series the gateway exports, through
    # what the rule does to them. Their values here are those of a healthy ledger (0 rows
    # dropped, 0 write errors, a few rows pending), which must not fire or even be pending; when
    # each alert does fire (thresholds, `for`) is tested on made-up series by promtool in
    # test_deploy_dashboard.py, since nothing here takes the database away.
    prometheus = stack["prometheus"]
    conditions = [alert_condition(rule) for rule in alerting_rules()]
    failures = settle(prometheus, [(f"alert {c.alert} without `{c.op} {c.threshold:g}`", c.query) for c in conditions])
    assert not failures, "no data from:\n" + "\n".join(f"{w}: {e}" for w, e in failures.items())
    alerts = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"] if r["type"] == "alerting"}
    assert set(alerts) == alert_names()
    for name, rule in alerts.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        assert rule["state"] == "inactive" and not rule["alerts"], f"{name} is {rule['state']}: {rule['alerts']}"


def test_every_dashboard_query_returns_data(stack):
    prometheus = stack["prometheus"]
    queries = [(q.where, substitute(q.expr)) for q in dashboard_queries()]
    assert not [e for _, e in queries if "$" in e], "a variable the test does not substitute"
    failures = settle(prometheus, queries)
    assert not failures, "no data from:\n" + "\n".join(f"{w}: {e}" for w, e in failures.items())


def test_variables_list_real_values_and_filter_on_real_labels(stack):
    prometheus = stack["prometheus"]
    settle(prometheus, [(q.where, substitute(q.expr)) for q in dashboard_queries()])  # data is in
    values = {}
    for name, query in variable_queries().items():
        metric, label = parse_label_values(query)
        values[name] = [v for v in prometheus.api(f"label/{label}/values", **{"match[]": metric}) if v]
        assert values[name], f"variable {name}: {query} lists nothing"
    assert set(values["model"]) >= {SMALL}, values["model"]
    assert {"team-a", "team-b"} <= set(values["team"]), values["team"]
    assert {"sim-small", "sim-large"} <= set(values["backend"]), values["backend"]

    problems = []
    for q in dashboard_queries():
        for name, options in values.items():
            if f"${name}" not in q.expr:
                continue
            hits = [v for v in options if finite_values(prometheus.query(substitute(q.expr, {name: regex_literal(v)})))]
            if not hits:
                problems.append(f"{q.where}: no data for any single {name} in {options}")
    assert not problems, "\n".join(problems)


def test_queries_name_only_metrics_that_are_exported(stack):
    gateway_page = exposition_names(httpx.get(f"{stack['gateway'].url}/metrics", timeout=5).text)
    sim = next(iter(stack["sims"].values()))
    vllm_page = exposition_names(httpx.get(f"{sim.url}/metrics", timeout=5).text)
    dcgm_page = exposition_names(httpx.get(f"{sim.url}/dcgm/metrics", timeout=5).text)
    recorded = recorded_names()
    problems = []
    for q in dashboard_queries() + rule_queries():
        for name in metric_names(substitute(q.expr)):
            if name.startswith("vllm:"):
                ok = name in VLLM_DOCUMENTED and name in vllm_page
            elif name.startswith("DCGM_"):
                ok = name in DCGM_DOCUMENTED and name in dcgm_page
            elif ":" in name:
                ok = name in recorded
            else:
                ok = name in gateway_page
            if not ok:
                problems.append(f"{q.where}: {name}")
    assert not problems, "metrics nobody exports:\n" + "\n".join(problems)


def test_the_energy_split_adds_up(stack):
    # attributed + idle + other = the GPUs' total, per backend (the recording rules' algebra).
    prometheus = stack["prometheus"]
    settle(prometheus, [("split", 'backend_kind:gateway_energy_joules:rate5m{kind="other"}')])
    total = {r["metric"]["backend"]: float(r["value"][1])
             for r in prometheus.query("backend:gateway_gpu_energy_joules:rate5m")["result"]}  # fmt: skip
    parts = {r["metric"]["backend"]: float(r["value"][1])
             for r in prometheus.query("sum by (backend) (backend_kind:gateway_energy_joules:rate5m)")["result"]}  # fmt: skip
    assert total and set(total) == set(parts)
    for backend in total:
        assert parts[backend] == pytest.approx(total[backend], rel=0.02), backend
    kinds = {r["metric"]["kind"] for r in prometheus.query("backend_kind:gateway_energy_joules:rate5m")["result"]}
    assert kinds == {"attributed", "idle", "other"}


def test_the_ledger_metrics_the_docs_name_are_exported(stack):
    # docs/production.md (and the manifests' comments) tell operators to watch and alert on these
    # when PostgreSQL is away: they must be the names the gateway's /metrics page carries.
    texts = [DOC, *sorted(DEPLOY.rglob("*.yaml"))]
    named = {n for path in texts for n in re.findall(r"\b(?:gateway|nudge)_ledger_\w+", path.read_text())}
    assert "gateway_ledger_rows_dropped_total" in named, named
    page = exposition_names(httpx.get(f"{stack['gateway'].url}/metrics", timeout=5).text)
    assert named <= page, f"named in docs/production.md or deploy/, not on /metrics: {sorted(named - page)}"
