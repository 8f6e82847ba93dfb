"""What vLLM refuses (seeds past int64, structured-output specs its grammar backend cannot
compile) and accepts (pydantic's lax booleans); regex outputs; the metric series vLLM exports
(prefix cache, cache config, n, preemptions, waiting by reason, hidden ones); short thinking on
trivial questions."""

from __future__ import annotations

import re

import httpx
import pytest

from .helpers import HI, chat, metric, samples

SMALL = ["--model", "Qwen/Qwen2-1.5B-Instruct", "--params-b", "1.5", "--speed", "instant"]
IPV4 = r"((25[0-5]|(2[0-4]|1\d|[1-9]|)\d)\.){3}(25[0-5]|(2[0-4]|1\d|[1-9]|)\d)"


@pytest.fixture(scope="module")
def sim(start):
    return start(*SMALL)


def test_seeds_outside_int64_are_refused(sim):
    for seed, kind in ((2**63, "less_than_equal"), (-(2**63) - 1, "greater_than_equal")):
        r = chat(sim, {"messages": HI, "max_tokens": 2, "seed": seed})
        assert r.status_code == 400 and kind in r.json()["error"]["message"]
    assert chat(sim, {"messages": HI, "max_tokens": 2, "seed": 2**63 - 1}).status_code == 200


def test_lax_booleans_are_accepted(sim):
    r = chat(sim, {"messages": HI, "max_tokens": 2, "logprobs": "true", "stream": "false"})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["content"]
    r = chat(sim, {"messages": HI, "max_tokens": 2, "logprobs": "perhaps"})
    assert r.status_code == 400 and "bool_parsing" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "spec",
    [
        {"json": {"type": "object", "properties": {"foo": "bar"}}},
        {"json": {"type": "objekt"}},
        {"regex": "[.*"},
        {"regex": {"1": "Python"}},
        {"grammar": 'root ::= select_statementinvalidsyntax\nselect_statement ::= "SELECT"'},
    ],
)
def test_structured_outputs_that_cannot_compile_are_400(sim, spec):
    r = chat(sim, {"messages": HI, "max_tokens": 5, "structured_outputs": spec})
    assert r.status_code == 400, r.text
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "structured_outputs": spec})
    assert r.status_code == 400


def test_a_valid_grammar_is_accepted(sim):
    grammar = 'root ::= answer\nanswer ::= "yes" | "no"  # a comment\n'
    r = chat(sim, {"messages": HI, "max_tokens": 5, "structured_outputs": {"grammar": grammar}})
    assert r.status_code == 200


def test_regex_outputs_match_and_vary_with_the_prompt(sim):
    answers = set()
    for question in ("Give an example IP address", "Give me a different one", "And one more"):
        messages = [{"role": "user", "content": question}]
        r = chat(sim, {"messages": messages, "max_tokens": 20, "structured_outputs": {"regex": IPV4}})
        content = r.json()["choices"][0]["message"]["content"]
        assert re.fullmatch(IPV4, content), content
        answers.add(content)
    assert len(answers) == 3
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 20, "guided_regex": r"[a-c]{3}\d"})
    assert re.fullmatch(r"[a-c]{3}\d", r.json()["choices"][0]["text"])


def test_iteration_tokens_count_the_token_sampled_in_prefill(start):
    sim = start(*SMALL, "--speed", "20")
    prompt = list(range(1000, 1009))
    for _ in range(4):
        r = httpx.post(sim.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 10}, timeout=30)
        assert r.status_code == 200
    assert metric(sim, "vllm:iteration_tokens_total_sum") == 4 * (9 + 10)
    assert metric(sim, "vllm:iteration_tokens_total_count") == 4 * 10
    assert metric(sim, "vllm:request_params_n_count") == 4 and metric(sim, "vllm:request_params_n_sum") == 4
    assert metric(sim, "vllm:prefix_cache_queries_total") == 4 * 9
    assert metric(sim, "vllm:prefix_cache_hits_total") == 0
    assert metric(sim, "vllm:request_num_preemptions_count") == 4


def test_cache_config_waiting_reasons_and_hidden_metrics(start):
    sim = start(*SMALL, "--show-hidden-metrics-for-version", "0.15")
    found = samples(httpx.get(sim.url + "/metrics").text)
    names = {name for name, _ in found}
    [info] = [dict(labels) for name, labels in found if name == "vllm:cache_config_info"]
    assert info["block_size"] == "16" and info["engine"] == "0" and int(info["num_gpu_blocks"]) > 0
    reasons = {dict(labels)["reason"] for name, labels in found if name == "vllm:num_requests_waiting_by_reason"}
    assert reasons == {"capacity", "deferred"}
    # hidden in 0.16, shown again for the previous minor release only
    assert "vllm:time_per_output_token_seconds_count" in names and "vllm:gpu_cache_usage_perc" in names
    other = start(*SMALL, "--show-hidden-metrics-for-version", "0.14")
    assert "vllm:time_per_output_token_seconds" not in httpx.get(other.url + "/metrics").text


def test_trivial_questions_think_briefly(start):
    sim = start("--model", "Qwen/Qwen3-0.6B", "--params-b", "0.6", "--reasoning", "qwen3", "--speed", "instant")
    for question in ("What is 1+1? Be concise.", "What is 2*3?", "What is 7 - 4?"):
        r = chat(sim, {"messages": [{"role": "user", "content": question}], "max_tokens": 200})
        message = r.json()["choices"][0]["message"]
        assert message["reasoning"] and message["content"], question
