"""Streaming: vLLM's SSE framing, byte for byte, and its usage-chunk rules."""

from __future__ import annotations

import json

import httpx

from .helpers import HI, chat, split_sse, stream_chat

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_first_chunk_is_byte_exact_and_the_stream_ends_with_done(plain):
    events, raw = stream_chat(plain, {"messages": HI, "max_tokens": 5}, headers={"X-Request-Id": "framing-1"})
    first = split_sse(raw)[0]
    created = events[0]["created"]
    assert first == (
        b'{"id":"chatcmpl-framing-1","object":"chat.completion.chunk","created":%d,"model":"%s",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
        % (created, LLAMA.encode())
    )
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    assert all(e["id"] == "chatcmpl-framing-1" and e["created"] == created for e in events)


def test_any_request_id_keeps_the_events_valid_json(plain):
    rid = 'id with "quotes" and \\ backslash'
    events, _ = stream_chat(plain, {"messages": HI, "max_tokens": 2}, headers={"X-Request-Id": rid})
    assert {e["id"] for e in events} == {"chatcmpl-" + rid}


def test_unset_fields_are_absent_not_null(plain):
    events, _ = stream_chat(plain, {"messages": HI, "max_tokens": 6})
    for event in events:
        assert "usage" not in event and "system_fingerprint" not in event
    for event in events[:-1]:
        (choice,) = event["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["finish_reason"] is None
        assert None not in choice["delta"].values()
    last = events[-1]["choices"][0]
    assert last["finish_reason"] == "length" and last["stop_reason"] is None


def test_streamed_text_equals_the_non_streamed_answer(plain):
    body = {"messages": [{"role": "user", "content": "Explain batching."}], "max_tokens": 40}
    events, _ = stream_chat(plain, body)
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    message = chat(plain, body).json()["choices"][0]["message"]
    assert streamed == message["content"] and len(streamed) > 40


def test_usage_chunk_only_when_asked(plain):
    base = {"messages": HI, "max_tokens": 4}
    events, _ = stream_chat(plain, base)
    assert all(e["choices"] for e in events)
    for options, expected in (({"include_usage": True}, True), ({}, True), ({"include_usage": False}, False)):
        events, _ = stream_chat(plain, {**base, "stream_options": options})
        if expected:  # vLLM: include_usage defaults to true once stream_options is sent
            *content, usage = events
            assert usage["choices"] == [] and all("usage" not in e for e in content)
            assert usage["usage"] == {
                "prompt_tokens": usage["usage"]["prompt_tokens"],
                "total_tokens": usage["usage"]["prompt_tokens"] + 4,
                "completion_tokens": 4,
            }
            assert list(usage["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"]
        else:
            assert all(e["choices"] and "usage" not in e for e in events)


def test_usage_counts_match_tokenize_and_have_no_reasoning_details(plain):
    events, _ = stream_chat(plain, {"messages": HI, "max_tokens": 7, "stream_options": {"include_usage": True}})
    count = httpx.post(plain.url + "/tokenize", json={"messages": HI}).json()["count"]
    assert events[-1]["usage"] == {"prompt_tokens": count, "total_tokens": count + 7, "completion_tokens": 7}


def test_continuous_usage_stats_on_every_chunk(plain):
    options = {"include_usage": True, "continuous_usage_stats": True}
    events, _ = stream_chat(plain, {"messages": HI, "max_tokens": 5, "stream_options": options})
    completions = [e["usage"]["completion_tokens"] for e in events]
    assert completions[0] == 0 and completions[-1] == 5
    assert completions == sorted(completions)
    assert all(
        e["usage"]["total_tokens"] == e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"] for e in events
    )


def test_stream_options_without_stream_is_a_400(plain):
    r = chat(plain, {"messages": HI, "stream_options": {"include_usage": True}})
    assert r.status_code == 400
    assert "Stream options can only be defined when `stream=True`." in r.json()["error"]["message"]


def test_one_token_per_event_when_the_reader_keeps_up(start):
    sim = start("--speed", "realistic")
    events, _ = stream_chat(sim, {"messages": HI, "max_tokens": 12})
    content = events[1:]
    # a loaded test machine may merge a token pair now and then; vLLM's rule is one token per event
    assert len(content) >= 12 - 2
    assert sum(len(e["choices"][0]["delta"]["content"]) > 0 for e in content) >= 12 - 2


def test_deltas_coalesce_when_the_engine_outruns_the_reader_unless_disabled(start):
    fast = start("--speed", "instant")
    per_token = start("--speed", "instant", "--no-coalesce")
    body = {"messages": HI, "max_tokens": 30}
    merged, _ = stream_chat(fast, body)
    single, _ = stream_chat(per_token, body)
    text = lambda events: "".join(e["choices"][0]["delta"].get("content", "") for e in events)  # noqa: E731
    assert text(merged) == text(single)
    assert len(single) == 1 + 30  # role, then one event per token
    assert len(merged) < len(single)


def test_completion_stream_chunks_carry_every_field(plain):
    body = {"prompt": "Once upon a time", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", plain.url + "/v1/completions", json=body, headers={"X-Request-Id": "c1"}) as r:
        raw = r.read()
    *chunks, done = split_sse(raw)
    assert done == b"[DONE]"
    parsed = [json.loads(c) for c in chunks]
    for chunk in parsed:  # vLLM dumps completion chunks with exclude_unset=False
        assert chunk["id"] == "cmpl-c1" and chunk["object"] == "text_completion" and chunk["usage"] is None
        assert {"index", "text", "logprobs", "finish_reason", "stop_reason"} <= set(chunk["choices"][0])
    assert [c["choices"][0]["finish_reason"] for c in parsed] == [None] * (len(parsed) - 1) + ["length"]
    full = httpx.post(plain.url + "/v1/completions", json={**body, "stream": False}).json()
    assert "".join(c["choices"][0]["text"] for c in parsed) == full["choices"][0]["text"]
