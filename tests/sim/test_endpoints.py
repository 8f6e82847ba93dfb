"""/tokenize, /detokenize, /v1/models, /health, /ping, /load, /version, /metrics; the process itself."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from gateway.sim.process import SimStartError, start_sim

from .helpers import HI, MODEL, chat


def test_tokenize_counts_what_generation_reports(qwen):
    for kwargs in ({}, {"chat_template_kwargs": {"enable_thinking": False}}):
        count = httpx.post(qwen.url + "/tokenize", json={"messages": HI, **kwargs}).json()
        usage = chat(qwen, {"messages": HI, "max_tokens": 1, **kwargs}).json()["usage"]
        assert count["count"] == usage["prompt_tokens"] == len(count["tokens"])
        assert count["max_model_len"] == 32768
    prompt = "The quick brown fox jumps over the lazy dog, twice: 12345."
    count = httpx.post(qwen.url + "/tokenize", json={"prompt": prompt}).json()["count"]
    usage = httpx.post(qwen.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()["usage"]
    assert count == usage["prompt_tokens"] and 12 <= count <= 20  # about four characters a token


def test_detokenize_round_trips(qwen):
    text = "Energy per token falls with batch size.\n\nIt rises with context length!"
    tokens = httpx.post(qwen.url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert "".join(tokens["token_strs"]) == text
    assert httpx.post(qwen.url + "/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": text}


def test_model_card_fields(qwen):
    body = httpx.get(qwen.url + "/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert {k: card[k] for k in ("id", "object", "owned_by", "root", "parent", "max_model_len")} == {
        "id": MODEL,
        "object": "model",
        "owned_by": "vllm",
        "root": MODEL,
        "parent": None,
        "max_model_len": 32768,
    }
    (perm,) = card["permission"]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")
    assert perm["allow_sampling"] is True and perm["organization"] == "*" and perm["group"] is None


def test_health_ping_version_metrics(qwen):
    r = httpx.get(qwen.url + "/health")
    assert r.status_code == 200 and r.content == b""
    assert httpx.get(qwen.url + "/ping").status_code == 200 and httpx.post(qwen.url + "/ping").status_code == 200
    assert httpx.get(qwen.url + "/version").json() == {"version": "0.16.0"}
    r = httpx.get(qwen.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "process_cpu_seconds_total" in r.text


def test_load_counts_requests_in_flight_when_tracking(start):
    tracked = start("--speed", "realistic", "--enable-server-load-tracking", "--enable-request-id-headers")
    assert httpx.get(tracked.url + "/load").json() == {"server_load": 0}
    with httpx.stream(
        "POST",
        tracked.url + "/v1/chat/completions",
        headers={"X-Request-Id": "echo-me"},
        json={"messages": HI, "stream": True, "max_tokens": 200},
    ) as r:
        assert r.headers["x-request-id"] == "echo-me"
        chunks = r.iter_raw()  # (a dropped iterator would close the stream)
        next(chunks)
        assert httpx.get(tracked.url + "/load").json() == {"server_load": 1}
    # leaving the block closes the stream: the request is aborted and no longer in flight
    deadline = time.monotonic() + 2
    while httpx.get(tracked.url + "/load").json()["server_load"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert httpx.get(tracked.url + "/load").json() == {"server_load": 0}


def test_start_sim_reports_why_a_simulator_did_not_start():
    with pytest.raises(SimStartError, match="invalid choice"):
        start_sim(["--model", "m", "--params-b", "8", "--gpu", "a100"])
    with pytest.raises(SimStartError, match="--gpus"):  # 70B in bf16 does not fit one H200
        start_sim(["--model", "meta-llama/Llama-3.1-70B-Instruct"])


def test_sigterm_stops_cleanly_and_sigkill_just_kills():
    sim = start_sim(["--model", "Qwen/Qwen3-1.7B", "--speed", "50"])
    assert sim.url.startswith("http://127.0.0.1:") and not sim.url.endswith(":0")
    assert chat(sim, {"messages": HI, "max_tokens": 2}).status_code == 200
    assert sim.stop() == 0
    killed = start_sim(["--model", "Qwen/Qwen3-1.7B", "--speed", "50"])
    assert killed.kill() == -signal.SIGKILL
    with pytest.raises(httpx.ConnectError):
        httpx.get(killed.url + "/health")


def test_non_streaming_answers_carry_every_field_like_vllm(qwen):
    body = chat(qwen, {"messages": HI, "max_tokens": 3, "chat_template_kwargs": {"enable_thinking": False}}).json()
    top = ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage"]
    assert list(body) == [*top, "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"]
    (choice,) = body["choices"]
    assert list(choice) == ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids"]
    message = ["role", "content", "refusal", "annotations", "audio", "function_call", "tool_calls", "reasoning"]
    assert list(choice["message"]) == message
    prompt = body["usage"]["prompt_tokens"]
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + 3, "completion_tokens": 3, "prompt_tokens_details": None}
    assert body["usage"] == usage
