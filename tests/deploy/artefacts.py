"""What the deployment tests read: the dashboard's and the rules' PromQL, metric names, tools.

Shared by the structure tests (no processes) and the end-to-end test that runs every query
against a real Prometheus.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "energy.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
DOC = ROOT / "docs" / "production.md"

# Names of vLLM's metrics as documented (shared/reference/vllm-api.md §4, from
# vllm/v1/metrics/loggers.py) and of dcgm-exporter's default energy fields
# (shared/reference/energy.md §5). A panel may use only these of theirs.
VLLM_DOCUMENTED = {
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    *(f"vllm:{h}_{s}" for h in (
        "request_prompt_tokens", "request_generation_tokens", "request_max_num_generation_tokens",
        "request_params_n", "request_params_max_tokens", "iteration_tokens_total", "time_to_first_token_seconds",
        "inter_token_latency_seconds", "request_time_per_output_token_seconds", "e2e_request_latency_seconds",
        "request_queue_time_seconds", "request_prefill_time_seconds", "request_decode_time_seconds",
        "request_inference_time_seconds", "time_per_prefill_token_request_seconds",
    ) for s in ("bucket", "sum", "count")),
}  # fmt: skip
DCGM_DOCUMENTED = {"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_POWER_USAGE_INSTANT"}

# What Grafana puts in for its built-in variables when we run a query ourselves: windows
# long enough to hold the test's whole load at a 1 s scrape interval.
BUILTINS = {"$__rate_interval": "5m", "$__range": "10m", "$__interval": "15s"}


def need_tool(name: str, how: str) -> str:
    """Path of an executable; skip when it is missing on a developer's machine, fail in CI."""
    path = shutil.which(name)
    if path is None:
        # A shell where the venv is not activated still has its tools next to the interpreter.
        import sys

        candidate = Path(sys.executable).parent / name
        path = str(candidate) if candidate.exists() else None
    if path is None:
        message = f"{name} is not installed ({how})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it (.ci/run)")
        pytest.skip(message)
    return path


# --------------------------------------------------------------------------- dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


@dataclass(frozen=True)
class Query:
    where: str  # "panel 9 'Energy per request ...' A" or "rule model_name:..."
    expr: str


def dashboard_queries(dash: dict | None = None) -> list[Query]:
    dash = dash or dashboard()
    out = []
    for panel in all_panels(dash):
        for target in panel.get("targets", []):
            out.append(Query(f"panel {panel['id']} {panel['title']!r} {target.get('refId')}", target.get("expr", "")))
    return out


def variable_queries(dash: dict | None = None) -> dict[str, str]:
    dash = dash or dashboard()
    out = {}
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out[var["name"]] = q["query"] if isinstance(q, dict) else q
    return out


def rules() -> list[dict]:
    """Every rule of rules.yml, recording and alerting."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> list[dict]:
    return [r for r in rules() if "record" in r]


def alerting_rules() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def _rule_where(rule: dict) -> str:
    if "record" in rule:
        return f"rule {rule['record']} {rule.get('labels') or ''}".strip()
    return f"alert {rule['alert']}"


def recording_rule_queries() -> list[Query]:
    return [Query(_rule_where(r), r["expr"]) for r in recording_rules()]


def rule_queries() -> list[Query]:
    """The expression of every rule, recording and alerting (for checks on the metric names)."""
    return [Query(_rule_where(r), r["expr"]) for r in rules()]


def recorded_names() -> set[str]:
    return {r["record"] for r in recording_rules()}


def alert_names() -> set[str]:
    return {r["alert"] for r in alerting_rules()}


# An alert's expression is a query compared with a number at its end (`... > 0`); the query
# alone is what the end-to-end test evaluates, and the threshold what the rule unit test moves
# series around.
_THRESHOLD = re.compile(
    r"^(?P<query>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$", re.S
)


@dataclass(frozen=True)
class AlertCondition:
    alert: str
    query: str  # the expression without its comparison
    op: str
    threshold: float


def alert_condition(rule: dict) -> AlertCondition:
    m = _THRESHOLD.match(rule["expr"].strip())
    assert m, f"alert {rule['alert']}: expression {rule['expr']!r} is not `<query> <comparison> <number>`"
    return AlertCondition(rule["alert"], m.group("query"), m.group("op"), float(m.group("threshold")))


_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$")


def parse_label_values(query: str) -> tuple[str, str]:
    m = _LABEL_VALUES.match(query.strip())
    assert m, f"variable query {query!r} is not label_values(metric, label)"
    return m.group(1), m.group(2)


def regex_literal(value: str) -> str:
    """A label value as a PromQL regex matching exactly it, escaped for a double-quoted string."""
    return re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\\\1", value)


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Grafana's substitution as the test does it: built-ins, then $var / ${var} (default '.*')."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    values = values or {}

    def var(m: re.Match) -> str:
        return values.get(m.group(1) or m.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


# --------------------------------------------------------------------------- PromQL names

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, label lists and functions removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery windows
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"(?<![\w:.])\d+(\.\d+)?([eE][-+]?\d+)?", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("(") or word in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def exposition_names(text: str) -> set[str]:
    """Sample names on a Prometheus text exposition page."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def finite_values(result: dict) -> list[float]:
    """The finite sample values of an instant query's result (vector or scalar)."""
    kind, data = result["resultType"], result["result"]
    if kind == "scalar":
        values = [float(data[1])]
    elif kind == "vector":
        values = [float(item["value"][1]) for item in data]
    else:
        raise AssertionError(f"unexpected result type {kind}")
    return [v for v in values if math.isfinite(v)]
