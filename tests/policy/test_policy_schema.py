"""The policy schema, the shipped files, `check` and the generated JSON Schema."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy import check
from gateway.policy.schema import PolicyFile, deep_merge, load_policy, render_json_schema
from gateway.policy.store import build_snapshot
from gateway.yamlfile import YamlFileError, parse_yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "policies" / "default.yaml", *sorted((ROOT / "policies" / "examples").glob("*.yaml"))]


def load(text: str):
    return load_policy(parse_yaml(text, "p.yaml"))


def problems(text: str) -> list[str]:
    with pytest.raises(YamlFileError) as info:
        load(text)
    return info.value.problems


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_validate(path):
    assert len(SHIPPED) >= 3
    snap = build_snapshot(str(path), path.read_text())
    assert snap.schema_version == 1
    for policy in snap.policies.values():
        assert policy.policy.reasoning.on_by_default is False  # reasoning is never on by default


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policies_point_editors_at_the_schema(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.split("$schema=")[1]).resolve()
    assert target == ROOT / "policies" / "policy.schema.json"


def test_default_policy_is_gentle():
    p = build_snapshot("d", (ROOT / "policies" / "default.yaml").read_text()).policies["default"].policy
    assert p.budgets == () and p.social_proof.enabled is False
    assert p.right_sizing.default_model == "auto" and p.feedback.enabled


def test_examples_express_what_they_promise():
    uni = build_snapshot("u", (ROOT / "policies/examples/university-cluster.yaml").read_text()).policies
    d = uni["default"].policy
    assert d.reasoning.require_header and d.reasoning.allow_teams
    assert d.right_sizing.explicit_large == "friction"
    actions = [(b.scope, b.period, b.unit, b.on_exceed) for b in d.budgets]
    assert ("team", "day", "wh", "downgrade") in actions and ("team", "day", "wh", "refuse") in actions
    prod = build_snapshot("p", (ROOT / "policies/examples/product-team.yaml").read_text()).policies["default"].policy
    assert prod.right_sizing.explicit_large == "warn" and prod.reasoning.max_tokens
    assert [(b.period, b.unit) for b in prod.budgets] == [("month", "usd")]


def test_json_schema_file_is_fresh():
    committed = (ROOT / "policies" / "policy.schema.json").read_text()
    assert committed == render_json_schema(), "regenerate: python -m gateway.policy.schema > policies/policy.schema.json"
    schema = json.loads(committed)
    assert schema["properties"]["version"]["const"] == 1
    assert schema["$defs"]["ReasoningPolicy"]["properties"]["require_header"]["description"]


def test_unknown_keys_and_bad_values_point_at_line_and_column():
    text = (
        "version: 1\n"
        "default:\n"
        "  reasoning:\n"
        "    alow: true\n"
        "  right_sizing:\n"
        "    explicit_large: nag\n"
        "  budgets:\n"
        "    - scope: team\n"
        "      period: daily\n"
        "      unit: wh\n"
    )
    got = problems(text)
    assert got[0].startswith("p.yaml:4:5: default.reasoning.alow: unknown key (did you mean 'allow'?); expected one of:")
    assert got[1] == "p.yaml:6:5: default.right_sizing.explicit_large: Input should be 'allow', 'warn' or 'friction' (got 'nag')"
    assert "p.yaml:8:7: default.budgets[0].limit: required field is missing" in got
    assert "p.yaml:9:7: default.budgets[0].period: Input should be 'day', 'week' or 'month' (got 'daily')" in got


def test_version_is_required_and_checked():
    assert problems("default: {}\n") == ["p.yaml:1:1: version: missing 'version: 1' at the top of the file"]
    assert "unsupported policy version" in problems("version: 2\n")[0]


def test_template_placeholders_are_checked():
    got = problems('version: 1\ndefault:\n  messages:\n    energy:\n      message: "{whh} Wh"\n')
    assert got[0].startswith("p.yaml:4:5: default.messages.energy: message: unknown placeholder {whh}; expected one of")
    got = problems('version: 1\ndefault:\n  messages:\n    energy:\n      message: "{wh:.2f} Wh"\n')
    assert "takes no format spec" in got[0]


def test_errors_inside_sections_point_into_the_section():
    got = problems("version: 1\nsections:\n  lab:\n    caps: {tiers: {large: {max_tokenz: 3}}}\n")
    assert got[0].startswith("p.yaml:4:28: sections.lab.caps.tiers.large.max_tokenz: unknown key (did you mean 'max_tokens'?)")
    assert "name the section" in problems("version: 1\nsections:\n  default: {}\n")[0]


def test_sections_deep_merge_over_default():
    loaded = load(
        "version: 1\n"
        "default:\n"
        "  reasoning: {max_tokens: 4096, require_header: true}\n"
        "  right_sizing: {aliases: {fast: 'tier:small'}}\n"
        "  caps: {tiers: {large: {max_tokens: 2048}}}\n"
        "  messages: {energy: {message: 'E {wh}', hint: 'H'}}\n"
        "  budgets: [{scope: team, period: day, unit: wh, limit: 5}]\n"
        "sections:\n"
        "  lab:\n"
        "    reasoning: {max_tokens: 8192}\n"
        "    right_sizing: {aliases: {big: 'tier:large'}}\n"
        "    caps: {tiers: {small: {max_tokens: 512}}}\n"
        "    messages: {energy: {message: 'Lab {wh}'}}\n"
        "    budgets: []\n"
    )
    lab = loaded.policies["lab"]
    assert lab.reasoning.max_tokens == 8192 and lab.reasoning.require_header is True  # scalar replaced, sibling kept
    assert dict(lab.right_sizing.aliases) == {"fast": "tier:small", "big": "tier:large"}  # mappings merge
    assert set(lab.caps.tiers) == {"large", "small"}
    assert lab.messages.energy.message == "Lab {wh}" and lab.messages.energy.hint == "H"
    assert lab.budgets == ()  # lists replace
    assert loaded.policies["default"].budgets[0].limit == 5


def test_deep_merge_rule():
    assert deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 2}) == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}


def test_policy_models_are_frozen():
    p = PolicyFile.model_validate({"version": 1})
    with pytest.raises(Exception):
        p.default.reasoning.allow = False


def test_check_cli_reports_positions_and_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefault:\n  caps:\n    max_tokens: lots\n")
    r = subprocess.run([sys.executable, "-m", "gateway.policy.check", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert f"{bad}:4:5: default.caps.max_tokens: Input should be a valid integer" in r.stderr
    good = subprocess.run(
        [sys.executable, "-m", "gateway.policy.check", "policies/default.yaml"], capture_output=True, text=True, cwd=ROOT
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("policies/default.yaml: OK: policy version 1") and "sections: default" in good.stdout


def test_check_run_api(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    assert check.run(parser.parse_args([str(ROOT / "policies/examples/university-cluster.yaml")])) == 0
    assert "sections: default, teaching, nlp-lab" in capsys.readouterr().out
    broken = tmp_path / "b.yaml"
    broken.write_text("version: 1\ndefault:\n  reasoning: [1\n")
    assert check.run(parser.parse_args([str(broken)])) == 1
    assert "invalid YAML" in capsys.readouterr().err
    assert check.run(parser.parse_args([str(tmp_path / "missing.yaml")])) == 1
