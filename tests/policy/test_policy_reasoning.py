"""The per-family thinking switch, per vLLM version (table-driven), and reading the client's wish."""

from __future__ import annotations

import copy
import itertools

import pytest

from gateway.policy.reasoning import accepted_efforts, apply_switch, client_reasoning_wish, effort_for, parse_version

MSG = {"messages": [{"role": "user", "content": "hi"}]}

# kind, reasoning on?, effort, vLLM version, extra client fields, expected extra fields upstream, runs, label
CASES = [
    ("hybrid", False, "medium", "0.15.1", {}, {"chat_template_kwargs": {"enable_thinking": False}}, False, "off"),
    ("hybrid", False, "medium", None, {"chat_template_kwargs": {"enable_thinking": True, "foo": 1}},
     {"chat_template_kwargs": {"foo": 1, "enable_thinking": False}}, False, "off"),
    ("hybrid", True, "high", "0.10.1", {"reasoning_effort": "high"}, {"chat_template_kwargs": {"enable_thinking": True}}, True, "on"),
    ("hybrid", False, "medium", "0.21.0", {"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}, False, "off"),
    ("opt_in", False, "medium", "0.15.1", {"chat_template_kwargs": {"thinking": True}}, {}, False, "off"),
    ("opt_in", False, "medium", "0.15.1", {}, {}, False, "off"),
    ("opt_in", True, "medium", "0.15.1", {"reasoning_effort": "medium"}, {"chat_template_kwargs": {"thinking": True}}, True, "on"),
    ("effort", False, "medium", "0.10.1", {}, {"reasoning_effort": "low"}, True, "low"),
    ("effort", False, "medium", "0.15.1", {"reasoning_effort": "none"}, {"reasoning_effort": "low"}, True, "low"),
    ("effort", True, "high", "0.15.1", {"reasoning_effort": "high"}, {"reasoning_effort": "high"}, True, "high"),
    ("effort", True, "max", "0.15.1", {"reasoning_effort": "max"}, {"reasoning_effort": "high"}, True, "high"),
    ("effort", True, "max", None, {}, {"reasoning_effort": "high"}, True, "high"),
    ("effort", True, "max", "0.21.0", {}, {"reasoning_effort": "max"}, True, "max"),
    ("effort", True, "minimal", "0.11.0", {}, {"reasoning_effort": "low"}, True, "low"),
    ("effort", True, "minimal", "0.20.0", {}, {"reasoning_effort": "minimal"}, True, "minimal"),
    ("always", False, "medium", "0.15.1", {"reasoning_effort": "none"}, {}, True, "on"),
    ("always", True, "medium", "0.15.1", {}, {}, True, "on"),
    ("none", False, "medium", "0.15.1", {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}, {}, False, "off"),
    ("none", True, "medium", "0.15.1", {"reasoning_effort": "low"}, {}, False, "off"),
    # the gateway's own opt-in spellings never go upstream
    ("hybrid", True, "medium", "0.15.1", {"thinking": {"type": "enabled", "budget_tokens": 1000}, "reasoning": {"effort": "high"}},
     {"chat_template_kwargs": {"enable_thinking": True}}, True, "on"),
]


@pytest.mark.parametrize("kind, on, effort, version, extra, expected, runs, label", CASES)
def test_switch_per_family_and_version(kind, on, effort, version, extra, expected, runs, label):
    body = {**copy.deepcopy(MSG), **copy.deepcopy(extra)}
    assert apply_switch(body, kind, on, effort, version) == (runs, label)
    assert body == {**MSG, **expected}


def test_never_sends_an_effort_the_backend_rejects():
    versions = [None, "0.10.1", "0.11.0", "0.15.1", "0.16.0", "0.19.0", "0.20.0", "0.22.1"]
    efforts = ["none", "minimal", "low", "medium", "high", "xhigh", "max", "bogus"]
    for kind, on, effort, version, client in itertools.product(
        ["hybrid", "opt_in", "effort", "always", "none"], [True, False], efforts, versions, efforts
    ):
        body = {"reasoning_effort": client, "messages": []}
        apply_switch(body, kind, on, effort, version)
        if "reasoning_effort" in body:
            assert kind == "effort"
            assert body["reasoning_effort"] in accepted_efforts(version)
            if version is None or parse_version(version) < (0, 20, 0):
                assert body["reasoning_effort"] in ("low", "medium", "high")


def test_client_kwargs_are_not_mutated():
    kwargs = {"enable_thinking": True}
    body = {"chat_template_kwargs": kwargs}
    apply_switch(body, "hybrid", False, "medium", None)
    assert kwargs == {"enable_thinking": True} and body["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    "version, parsed",
    [("0.15.1", (0, 15, 1)), ("v0.10.1.dev12+g3f2a", (0, 10, 1)), ("0.20", (0, 20, 0)), (None, None), ("main", None)],
)
def test_parse_version(version, parsed):
    assert parse_version(version) == parsed


def test_effort_for():
    assert effort_for("xhigh", "0.15.1") == "high" and effort_for("xhigh", "0.20.1") == "xhigh"
    assert effort_for("none", None) == "low"


@pytest.mark.parametrize(
    "header, body, wish",
    [
        (None, {}, (None, "", None)),
        ("on", {}, (True, "header", None)),
        ("ON ", {"reasoning_effort": "none"}, (True, "header", None)),  # the header wins
        ("high", {}, (True, "header", "high")),
        ("off", {"reasoning_effort": "high"}, (False, "header", None)),
        (None, {"reasoning_effort": "high"}, (True, "reasoning_effort", "high")),
        (None, {"reasoning_effort": "none"}, (False, "reasoning_effort", None)),
        (None, {"chat_template_kwargs": {"enable_thinking": True}}, (True, "chat_template_kwargs", None)),
        (None, {"chat_template_kwargs": {"enable_thinking": False}}, (False, "chat_template_kwargs", None)),
        (None, {"chat_template_kwargs": {"thinking": True}}, (True, "chat_template_kwargs", None)),
        (None, {"thinking": {"type": "enabled"}}, (True, "thinking", None)),
        (None, {"reasoning": {"effort": "low"}}, (True, "reasoning", "low")),
        (None, {"reasoning": {"enabled": False}}, (False, "reasoning", None)),
        ("maybe", {}, (None, "", None)),
    ],
)
def test_client_reasoning_wish(header, body, wish):
    assert client_reasoning_wish(header, body) == wish


@pytest.mark.parametrize("value", [1, "yes", "no", "true", [1], {"a": 1}, 2.5])
@pytest.mark.parametrize("kind", ["hybrid", "opt_in", "none", "always"])
def test_off_leaves_no_switch_a_template_would_read_as_on(value, kind):
    # Jinja's {% if thinking %} is true for 1, "yes" and even "no": none of them may reach the backend
    body = {"chat_template_kwargs": {name: value for name in ("enable_thinking", "thinking", "reasoning",
                                                               "enable_reasoning")} | {"other": 3}}  # fmt: skip
    apply_switch(body, kind, False, "low", None)
    kwargs = body.get("chat_template_kwargs", {})
    assert all(kwargs.get(name) in (None, False) for name in ("enable_thinking", "thinking", "reasoning",
                                                              "enable_reasoning"))  # fmt: skip
    assert kwargs["other"] == 3  # what is not a switch is the client's business


@pytest.mark.parametrize("value, wish", [(1, True), ("yes", True), (True, True), (0, False), (False, False), ("", False)])
def test_a_truthy_template_switch_is_read_as_asking_for_reasoning(value, wish):
    assert client_reasoning_wish(None, {"chat_template_kwargs": {"thinking": value}})[:2] == (wish, "chat_template_kwargs")
