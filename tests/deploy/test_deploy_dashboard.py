"""The Grafana dashboard, the recording and alerting rules and the Prometheus config, without running them.

(Running every query against a real Prometheus is ``test_deploy_prometheus_e2e.py``; the alerts'
thresholds and ``for`` are run here, on made-up series, by ``promtool test rules``.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from gateway.telemetry.metrics import Metrics
from tests.deploy.artefacts import (
    DASHBOARD,
    DCGM_DOCUMENTED,
    DEPLOY,
    DOC,
    K8S,
    PROMETHEUS_YML,
    ROOT,
    RULES,
    VLLM_DOCUMENTED,
    alert_condition,
    alert_names,
    alerting_rules,
    all_panels,
    dashboard,
    dashboard_queries,
    metric_names,
    need_tool,
    parse_label_values,
    recorded_names,
    recording_rules,
    rule_queries,
    rules,
    substitute,
    variable_queries,
)

# Grafana unit ids the panels may use (Grafana's built-in ids, plus "suffix:" custom units).
KNOWN_UNITS = {"short", "none", "joule", "watth", "kwatth", "watt", "massg", "masskg", "currencyUSD",
               "percentunit", "percent", "s", "ms", "opm", "reqps"}  # fmt: skip


def declared_sample_names() -> set[str]:
    """Every sample name the gateway's registry can export, from gateway/telemetry/metrics.py."""
    names = set()
    metrics = Metrics()
    # The ledger's counts (gateway_ledger_*) are exported once the app hands its ledger over.
    metrics.watch_ledger(SimpleNamespace(path="usage.db", written=0, dropped=0, write_errors=0, pending=0))
    for family in metrics.registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "gauge":
            names.add(family.name)
        else:
            names.add(family.name)
    return names


def test_generated_files_are_up_to_date():
    # The dashboard JSON, the panel reference in docs/production.md and the PrometheusRule
    # come from deploy/generate.py; an edit to one of them alone would drift.
    result = subprocess.run([sys.executable, str(DEPLOY / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_panel_ids_are_unique_and_every_panel_is_placed():
    panels = all_panels(dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_datasource_variable_is_used_by_every_panel_and_target():
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in all_panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", panel["title"]
    for name in ("model", "backend", "team", "key"):
        var = variables[name]
        assert var["datasource"]["uid"] == "${datasource}"
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*", name


def test_variables_filter_on_the_labels_they_list():
    # model lists model_name values (vLLM's label), backend backend, team team; a panel that
    # uses $model must filter a model_name label with it, and so on.
    queries = variable_queries()
    assert parse_label_values(queries["model"])[1] == "model_name"
    assert parse_label_values(queries["backend"])[1] == "backend"
    assert parse_label_values(queries["team"])[1] == "team"
    assert parse_label_values(queries["key"])[1] == "key"
    allowed = {"model": {"model_name"}, "backend": {"backend"}, "team": {"team", "name"}, "key": {"key"}}
    for q in dashboard_queries():
        for var, labels in allowed.items():
            for label in re.findall(r'(\w+)=~"\$' + var + '"', q.expr):
                assert label in labels, f"{q.where}: ${var} filters label {label!r}"
            if f"${var}" in q.expr:
                assert any(f'{label}=~"${var}"' in q.expr for label in labels), f"{q.where}: odd use of ${var}"


def test_every_panel_has_a_unit_and_every_target_an_expression():
    for panel in all_panels(dashboard()):
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit and (unit in KNOWN_UNITS or unit.startswith("suffix:")), f"{panel['title']!r}: unit {unit!r}"
        for override in panel["fieldConfig"].get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in KNOWN_UNITS, f"{panel['title']!r}: override unit {prop['value']!r}"
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']!r} target {target['refId']} has no expr"
        assert panel.get("description"), f"{panel['title']!r} has no description"


def test_every_filter_applies_where_its_label_exists():
    # a series that has a team (key) label is filtered by $team ($key) in every query that reads it
    labelled = {"team": ("gateway_requests_total", "gateway_tokens_total", "gateway_model_energy_joules_total",
                         "gateway_co2e_grams_total", "gateway_cost_usd_total", "team:gateway_co2e_grams:rate5m"),
                "key": ("gateway_requests_total", "gateway_request_energy_joules_sum", "gateway_request_energy_joules_count")}
    for q in dashboard_queries():
        for label, metrics in labelled.items():
            for metric in metrics:
                for m in re.finditer(re.escape(metric) + r"\{([^}]*)\}", q.expr):
                    assert f'{label}=~"${label}"' in m.group(1), f"{q.where}: {metric} without ${label}"


def test_panels_on_recorded_series_say_they_need_the_rules():
    for panel in all_panels(dashboard()):
        if panel["type"] != "row" and any(re.search(r"\b[a-z_]+:[a-z_:]+", t["expr"]) for t in panel["targets"]):
            assert "recording rules" in panel["description"], panel["title"]


def test_the_panels_a_team_lead_asked_for_are_there():
    exprs = " ".join(q.expr for q in dashboard_queries())
    wanted = {
        "energy per request p50/p95": "model_name:gateway_request_energy_joules:histogram_quantile_rate5m",
        "Wh per 1,000 requests": "model_name:gateway_energy_wh_per_1k_requests:rate1h",
        "1-5 stars": "model_name:gateway_energy_score_stars:rate1h",
        "GPU power per backend": "gateway_gpu_power_watts",
        "attributed vs idle energy": "backend_kind:gateway_energy_joules:rate5m",
        "CO2e over time": "team:gateway_co2e_grams:rate5m",
        "energy saved by lever": "model_name_lever:gateway_energy_saved_joules:rate5m",
        "share routed by tier": "tier:gateway_route_decisions:ratio_rate5m",
        "reasoning on/off share": "gateway_reasoning_requests_total",
        "nudges by kind": "gateway_nudges_total",
        "budget burn per team": "gateway_budget_used_ratio",
        "tokens per joule": "model_name:gateway_tokens_per_joule:rate5m",
        "vLLM beside ours": "vllm:generation_tokens_total",
        "cost over time by team": "sum by (team) (rate(gateway_cost_usd_total",
        "energy per key": "sum by (key) (rate(gateway_request_energy_joules_sum",
        "requests per key": "sum by (key, team) (increase(gateway_requests_total",
        "the router's quality budget": "gateway_router_predicted_quality",
    }
    missing = [what for what, needle in wanted.items() if needle not in exprs]
    assert not missing, f"no panel for: {missing}"


def test_queries_use_only_exported_documented_or_recorded_metrics():
    # Static half of the check (the e2e test checks against a running gateway's /metrics):
    # gateway_* names must be declared in gateway/telemetry/metrics.py; vllm:* and DCGM_*
    # names must be the documented ones; anything with a colon must be one of our rules.
    declared = declared_sample_names()
    recorded = recorded_names()
    problems = []
    for q in dashboard_queries() + rule_queries():
        for name in metric_names(substitute(q.expr)):
            if name.startswith("vllm:"):
                ok = name in VLLM_DOCUMENTED
            elif ":" in name:
                ok = name in recorded
            elif name.startswith("gateway_"):
                ok = name in declared
            else:
                ok = name in DCGM_DOCUMENTED
            if not ok:
                problems.append(f"{q.where}: {name}")
    assert not problems, "unknown metrics:\n" + "\n".join(problems)


def test_metric_name_extraction():
    # The checks above rely on this parser; it must find selectors and ignore the rest.
    expr = ('histogram_quantile(0.95, sum by (model_name, le) (rate(gateway_request_duration_seconds_bucket'
            '{model_name=~"$model"}[1m]))) / ignoring (lever) group_left () (sum(vllm:num_requests_running) > 0)'
            ' * 1e-9 - on (backend) backend:gateway_gpu_energy_joules:rate5m or DCGM_FI_DEV_POWER_USAGE')  # fmt: skip
    assert metric_names(expr) == {
        "gateway_request_duration_seconds_bucket", "vllm:num_requests_running",
        "backend:gateway_gpu_energy_joules:rate5m", "DCGM_FI_DEV_POWER_USAGE",
    }  # fmt: skip


def test_rules_and_prometheus_config_pass_promtool(tmp_path):
    # `check rules` covers both kinds: recording rules' names and expressions, alerts' expressions,
    # `for` and the templates of their labels and annotations.
    promtool = need_tool("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_either_records_or_alerts():
    for rule in rules():
        assert ("record" in rule) != ("alert" in rule), rule
        if "record" in rule:  # `for` and annotations mean nothing on a recording rule
            assert not {"for", "annotations", "keep_firing_for"} & set(rule), rule["record"]
    assert recording_rules() and alerting_rules()


def test_recording_rule_names_follow_the_convention():
    # level:metric:operations, and every record the dashboard reads exists.
    for rule in recording_rules():
        level, metric, ops = rule["record"].split(":")
        assert level and metric.startswith("gateway_") and ops, rule["record"]
    used = set().union(*(metric_names(substitute(q.expr)) for q in dashboard_queries()))
    assert {n for n in used if ":" in n and not n.startswith("vllm:")} <= recorded_names()


def test_prometheusrule_holds_the_same_rules_as_rules_yml():
    manifest = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"] == yaml.safe_load(RULES.read_text())  # recording rules and alerts alike
    carried = {r["alert"] for g in manifest["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert carried == alert_names()


# --------------------------------------------------------------------------- alerts

# The alerts on the usage ledger that docs/production.md ("When PostgreSQL is unreachable") names.
LEDGER_ALERTS = {"NudgeLedgerRowsDropped", "NudgeLedgerWriteErrors", "NudgeLedgerBacklog"}
SEVERITIES = {"warning", "critical"}


def _section(doc: str, heading: str) -> str:
    start = doc.index(heading)
    end = doc.find("\n#", start + len(heading))
    return doc[start:] if end < 0 else doc[start:end]


def test_every_alert_says_how_long_how_bad_and_what_to_do():
    assert alert_names() >= LEDGER_ALERTS
    doc = DOC.read_text(encoding="utf-8")
    unreachable = _section(doc, "### When PostgreSQL is unreachable")
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Nudge[A-Z][A-Za-z0-9]+", name), name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: `for` missing or odd"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: labels.severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name}: annotations.{key} missing"
        assert "docs/production.md" in annotations["description"], f"{name}: the description points nowhere"
        # `<query> <comparison> <number>`: the e2e test runs the query alone against a real Prometheus.
        alert_condition(rule)
        if name in LEDGER_ALERTS:
            assert f"`{name}`" in unreachable, f"docs/production.md, When PostgreSQL is unreachable, omits {name}"
    assert len(alert_names()) == len(alerting_rules()), "two alerts share a name"


# What each ledger alert does on made-up series, one value a minute from 0m for a few replicas
# (instances), and the alert's state for each replica at some minutes (none listed: no alert).
# It pins the behaviour docs/production.md describes: what fires, after how long, and what
# does not (a single write error, a short burst of pending rows, a backlog under the threshold).
_N = 40
LEDGER_ALERT_CASES = {
    "NudgeLedgerRowsDropped": (
        "gateway_ledger_rows_dropped_total",
        {"lost": [0] * 10 + [3] * (_N - 10), "fine": [0] * _N},
        {5: {}, 10: {"lost": "firing"}, 15: {"lost": "firing"}, 25: {}},  # at once, for 10 minutes
    ),
    "NudgeLedgerWriteErrors": (
        "gateway_ledger_write_errors_total",
        {
            "down": [0] * 6 + [30 * i for i in range(1, 25)] + [720] * (_N - 30),  # fails from 6m to 29m
            "blip": [0] * 6 + [1] * (_N - 6),  # one failed attempt at 6m
            "fine": [0] * _N,
        },
        {
            5: {},
            7: {"down": "pending", "blip": "pending"},  # the blip is pending for a moment, never fires
            9: {"down": "pending"},
            12: {"down": "firing"},  # 5 minutes after the first failure
            29: {"down": "firing"},
            35: {},  # writes have succeeded again for 5 minutes
        },
    ),
    "NudgeLedgerBacklog": (
        "gateway_ledger_rows_pending",
        {
            "outage": [0] * 6 + [20000] * 24 + [0] * (_N - 30),  # above 10000 from 6m to 29m
            "burst": [0] * 6 + [50000] * 3 + [0] * (_N - 9),  # above for 3 minutes only
            "busy": [5000] * _N,  # below the threshold
        },
        {
            5: {},
            7: {"outage": "pending", "burst": "pending"},
            10: {"outage": "pending"},  # the burst is over: it never fires
            12: {"outage": "firing"},  # 5 minutes above the threshold
            35: {},
        },
    ),
}


def test_the_ledger_alerts_fire_when_they_should(tmp_path):
    promtool = need_tool("promtool", "apt-get install prometheus")
    severity = {r["alert"]: r["labels"]["severity"] for r in alerting_rules()}
    assert set(LEDGER_ALERT_CASES) == LEDGER_ALERTS
    tests = []
    for alert, (metric, series, expected) in LEDGER_ALERT_CASES.items():
        assert all(len(v) == _N for v in series.values()), alert
        input_series = [{"series": f'{metric}{{instance="{inst}:9091", job="gateway"}}',
                         "values": " ".join(map(str, values))} for inst, values in series.items()]  # fmt: skip
        checks = []
        for minute, states in expected.items():
            samples = [{"labels": f'ALERTS{{alertname="{alert}", alertstate="{state}", instance="{inst}:9091", '
                                  f'job="gateway", severity="{severity[alert]}"}}', "value": 1}
                       for inst, state in states.items()]  # fmt: skip
            checks.append({"expr": f'ALERTS{{alertname="{alert}"}}', "eval_time": f"{minute}m", "exp_samples": samples})
        tests.append({"name": alert, "interval": "1m", "input_series": input_series, "promql_expr_test": checks})
    test_file = tmp_path / "ledger-alerts.test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_describe_every_panel_with_its_queries():
    doc = DOC.read_text(encoding="utf-8")
    assert doc.startswith("# Running in production")
    for panel in all_panels(dashboard()):
        assert panel["title"] in doc, f"docs/production.md does not describe {panel['title']!r}"
        for target in panel.get("targets", []):
            assert target["expr"] in doc, f"docs/production.md lacks the query of {panel['title']!r}"


def test_grafana_provisioning_matches_the_compose_mounts():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("../"))
    provisioning = DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "nudge-gateway.yaml").read_text())["providers"]
    dashboards_in_container = providers[0]["options"]["path"]
    assert mounts["../grafana/dashboards"] == dashboards_in_container
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_in_container}/{DASHBOARD.name}"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (DEPLOY / "grafana").rglob("*.json")))
def test_every_dashboard_file_is_json_with_a_uid(path):
    import json

    dash = json.loads((ROOT / path).read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
