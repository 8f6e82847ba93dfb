"""Reasoning: Qwen3 hybrid and DeepSeek-R1 behaviour, field names and reasoning_effort by version."""

from __future__ import annotations

import pytest

from .helpers import HI, chat, stream_chat

OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def versions(start):
    return {
        v: start("--reasoning", "qwen3", "--speed", "50", "--vllm-version", v)
        for v in ("0.10.0", "0.12", "0.15", "0.20")
    }


@pytest.fixture(scope="module")
def fast(start):
    """Whole reasoning answers are thousands of tokens: run them on an instant simulator."""
    return start("--reasoning", "qwen3", "--speed", "instant")


@pytest.fixture(scope="module")
def r1(start):
    return start(
        "--model",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "--params-b",
        "7",
        "--reasoning",
        "deepseek_r1",
        "--speed",
        "50",
    )


def message(sim, **body):
    r = chat(sim, {"messages": HI, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"], r.json()["usage"]


def test_qwen3_thinks_by_default_and_a_cut_off_answer_has_no_content(qwen):
    msg, usage = message(qwen, max_tokens=30)
    assert msg["content"] is None and len(msg["reasoning"]) > 50
    assert usage["completion_tokens"] == 30 and "completion_tokens_details" not in usage


def test_enable_thinking_false_gives_content_only(qwen):
    msg, _ = message(qwen, max_tokens=30, **OFF)
    assert msg["reasoning"] is None and len(msg["content"]) > 50


def test_the_template_switch_only_takes_a_real_false(qwen):
    msg, _ = message(qwen, max_tokens=20, chat_template_kwargs={"enable_thinking": "false"})  # a string is truthy
    assert msg["reasoning"] and msg["content"] is None


def test_enable_thinking_false_adds_the_empty_think_block_to_the_prompt(qwen):
    _, on = message(qwen, max_tokens=1)
    _, off = message(qwen, max_tokens=1, **OFF)
    assert off["prompt_tokens"] == on["prompt_tokens"] + 4  # <think>\n\n</think>\n\n


def test_full_reasoning_answer_stream_matches_non_stream(fast):
    body = {"messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    msg, usage = message(fast, **body)
    events, _ = stream_chat(fast, {**body, "stream_options": {}})
    deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
    kinds = ["reasoning" if "reasoning" in d else "content" for d in deltas]
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning first, then the answer
    assert "".join(d.get("reasoning", "") for d in deltas) == msg["reasoning"]
    assert "".join(d.get("content", "") for d in deltas) == msg["content"]
    assert msg["content"].startswith("\n\n") and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"] == {k: v for k, v in usage.items() if k != "prompt_tokens_details"}


HARD = ("Solve x^2 - 5x + 6 = 0 and prove there are no other roots.",
        "Implement a function that finds the longest palindromic substring and state its complexity.",
        "Derive the closed form of the sum of the first n cubes and prove it by induction.",
        "Which of these is prime?\nA. 21\nB. 27\nC. 29\nD. 33")
SMALL_TALK = ("Hi there!", "Thanks a lot!", "Good morning!", "How are you?")


def test_reasoning_answers_to_hard_problems_are_many_times_longer(fast):
    thinking = plain = 0
    for question in HARD:
        body = {"messages": [{"role": "user", "content": question}]}
        thinking += message(fast, **body)[1]["completion_tokens"]
        plain += message(fast, **body, **OFF)[1]["completion_tokens"]
    assert thinking > 5 * plain


def test_small_talk_thinks_briefly_and_hard_problems_long(fast):
    # published lengths (gateway/sim/text.py): GPQA-like problems ~7,000 reasoning tokens, chat ~600,
    # small talk less; the gateway learns what reasoning costs from these (energy/counterfactual.py)
    def thought(question):  # the reasoning text's length in tokens, as the simulator counts it
        msg, usage = message(fast, messages=[{"role": "user", "content": question}], max_tokens=32000)
        return len(msg["reasoning"]) / 4

    small = sum(thought(q) for q in SMALL_TALK) / len(SMALL_TALK)
    chat = sum(thought(q) for q in ("Tell me about the history of the Roman empire.",
                                    "What should I cook for dinner tonight with some leftover rice?")) / 2
    hard = sum(thought(q) for q in HARD) / len(HARD)
    assert small < chat < hard and hard > 5 * chat


def test_no_think_soft_switch_gives_an_empty_think_block(fast):
    msg, usage = message(fast, messages=[{"role": "user", "content": "Quick question /no_think"}])
    assert msg["reasoning"].strip() == "" and msg["content"]
    assert usage["completion_tokens"] < 3000


def test_include_reasoning_false_hides_it_but_still_pays_for_it(qwen):
    shown, used = message(qwen, max_tokens=25)
    hidden, used_hidden = message(qwen, max_tokens=25, include_reasoning=False)
    assert shown["reasoning"] and hidden["reasoning"] is None
    assert used == used_hidden


@pytest.mark.parametrize(
    "version,fields",
    [
        ("0.10.0", ("reasoning_content",)),
        ("0.12", ("reasoning", "reasoning_content")),
        ("0.16", ("reasoning",)),
    ],
)
def test_reasoning_field_names_by_version(versions, qwen, version, fields):
    sim = qwen if version == "0.16" else versions[version]
    msg, _ = message(sim, max_tokens=10)
    present = {k for k in ("reasoning", "reasoning_content") if k in msg}
    assert present == set(fields) and all(msg[f] for f in fields)
    events, _ = stream_chat(sim, {"messages": HI, "max_tokens": 10})
    for event in events[1:]:
        delta = event["choices"][0]["delta"]
        assert {k for k in ("reasoning", "reasoning_content") if k in delta} == set(fields)
        assert "content" not in delta or event["choices"][0]["finish_reason"]


def test_reasoning_effort_accepts_only_low_medium_high_before_0_20(versions, qwen):
    for sim in (versions["0.15"], qwen):
        for effort in ("none", "minimal", "xhigh"):
            r = chat(sim, {"messages": HI, "max_tokens": 5, "reasoning_effort": effort})
            assert r.status_code == 400 and "literal_error" in r.json()["error"]["message"]
        assert chat(sim, {"messages": HI, "max_tokens": 5, "reasoning_effort": "low"}).status_code == 200


def test_reasoning_effort_none_switches_qwen3_thinking_off_from_0_20(versions):
    sim = versions["0.20"]
    msg, _ = message(sim, max_tokens=20, reasoning_effort="none")
    assert msg["reasoning"] is None and msg["content"]
    for effort in ("minimal", "xhigh", "max"):
        assert message(sim, max_tokens=5, reasoning_effort=effort)[0]["reasoning"]
    # an explicit enable_thinking wins over the effort
    msg, _ = message(sim, max_tokens=20, reasoning_effort="none", chat_template_kwargs={"enable_thinking": True})
    assert msg["reasoning"] and msg["content"] is None


def test_deepseek_r1_always_thinks(r1):
    for extra in ({}, OFF, {"chat_template_kwargs": {"thinking": False}}):
        msg, _ = message(r1, max_tokens=15, **extra)
        assert msg["reasoning"] and msg["content"] is None
    events, _ = stream_chat(r1, {"messages": HI, "max_tokens": 3})
    assert events[1]["choices"][0]["delta"] == {"reasoning": "\n"}  # no <think> token: the template opened it
