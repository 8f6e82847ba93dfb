"""``/v1/responses`` (OpenAI Responses) and ``/v1/messages`` (Anthropic Messages), built on the chat
generation: the official SDKs parse them, streamed and not; the routes are gated by ``--vllm-version``."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from .helpers import MODEL, metric

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ASK = "Hello, who are you?"


def oai(sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0)


def claude(sim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sim", max_retries=0)


def raw_events(sim, path: str, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", sim.url + path, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read()
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    out = []
    for block in raw[:-2].split(b"\n\n"):
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = json.loads(data[len(b"data: ") :])
        assert event["type"] == name[len(b"event: ") :].decode()
        out.append((event["type"], event))
    return out


# --------------------------------------------------------------------------- Responses


def test_responses_create(plain):
    before = metric(plain, "vllm:request_success_total")
    r = oai(plain).responses.create(model=LLAMA, input=ASK, instructions="Be brief.", max_output_tokens=300)
    assert r.id.startswith("resp_") and len(r.id) == 5 + 32 and r.object == "response" and r.model == LLAMA
    assert r.status == "completed" and r.incomplete_details is None
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_") and item.content[0].type == "output_text"
    assert r.output_text and item.content[0].annotations == []
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0 and u.output_tokens_details.reasoning_tokens == 0
    assert r.instructions == "Be brief." and r.max_output_tokens == 300 and r.truncation == "disabled"
    assert metric(plain, "vllm:request_success_total") == before + 1  # the engine saw one request


def test_responses_model_may_be_omitted_and_list_input(plain):
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": ASK}]}], "max_output_tokens": 4}
    r = httpx.post(plain.url + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == LLAMA and data["store"] is True


def test_responses_incomplete(plain):
    r = oai(plain).responses.create(model=LLAMA, input=ASK, max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].type == "message"


def test_responses_stream(plain):
    with oai(plain).responses.stream(model=LLAMA, input=ASK, max_output_tokens=6) as stream:
        final = stream.get_final_response()
    assert final.status == "incomplete" and final.usage.output_tokens == 6 and final.output_text
    events = raw_events(plain, "/v1/responses", {"model": LLAMA, "input": ASK, "max_output_tokens": 6})
    names = [name for name, _ in events]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    assert names[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",  # even when the response is incomplete
    ]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    deltas = "".join(e["delta"] for name, e in events if name == "response.output_text.delta")
    done = events[-1][1]["response"]
    assert done["status"] == "incomplete" and done["output"][0]["content"][0]["text"] == deltas
    assert events[-4][1]["text"] == deltas


def test_responses_reasoning_item(qwen):
    r = oai(qwen).responses.create(model=MODEL, input=ASK, max_output_tokens=2000)
    kinds = [item.type for item in r.output]
    assert kinds[0] == "reasoning" and r.output[0].id.startswith("rs_")
    assert r.output[0].summary == [] and r.output[0].content[0].type == "reasoning_text"
    assert r.output[0].content[0].text and r.usage.output_tokens_details.reasoning_tokens > 0
    assert kinds == ["reasoning", "message"] and r.output_text
    events = raw_events(qwen, "/v1/responses", {"model": MODEL, "input": ASK, "max_output_tokens": 2000})
    names = [name for name, _ in events]
    assert names[2:5] == [
        "response.output_item.added",
        "response.reasoning_part.added",
        "response.reasoning_text.delta",
    ]
    end = names.index("response.reasoning_text.done")
    assert names[end : end + 5] == [
        "response.reasoning_text.done",
        "response.reasoning_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[end + 3][1]["output_index"] == 1 and events[end + 3][1]["item"]["type"] == "message"
    with oai(qwen).responses.stream(model=MODEL, input=ASK, max_output_tokens=2000) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_responses_errors(plain):
    r = httpx.post(plain.url + "/v1/responses", json={"model": "nope", "input": ASK}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["message"] == "The model `nope` does not exist."
    body = {"model": LLAMA, "input": ASK, "previous_response_id": "resp_123"}
    r = httpx.post(plain.url + "/v1/responses", json=body, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["message"] == "Response with id 'resp_123' not found."


# --------------------------------------------------------------------------- Messages


def test_messages_create(plain):
    m = claude(plain).messages.create(
        model=LLAMA, max_tokens=300, system="Be brief.", messages=[{"role": "user", "content": ASK}]
    )
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == LLAMA
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_messages_max_tokens_and_stream(plain):
    c = claude(plain)
    m = c.messages.create(model=LLAMA, max_tokens=5, messages=[{"role": "user", "content": ASK}])
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    with c.messages.stream(model=LLAMA, max_tokens=7, messages=[{"role": "user", "content": ASK}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 7 and final.content[0].text
    assert final.usage.input_tokens == m.usage.input_tokens
    events = raw_events(
        plain, "/v1/messages", {"model": LLAMA, "max_tokens": 7, "messages": [{"role": "user", "content": ASK}]}
    )
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens" and events[-2][1]["usage"]["output_tokens"] == 7


def test_messages_thinking_block(qwen):
    c = claude(qwen)
    m = c.messages.create(model=MODEL, max_tokens=2000, messages=[{"role": "user", "content": ASK}])
    assert [b.type for b in m.content] == ["thinking", "text"] and m.content[0].thinking
    with c.messages.stream(model=MODEL, max_tokens=2000, messages=[{"role": "user", "content": ASK}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.stop_reason == "end_turn"
    off = c.messages.create(
        model=MODEL, max_tokens=2000, messages=[{"role": "user", "content": ASK}], thinking={"type": "disabled"}
    )
    assert [b.type for b in off.content] == ["text"]


def test_messages_errors(plain):
    r = httpx.post(plain.url + "/v1/messages", json={"model": LLAMA, "messages": []}, timeout=60)
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude(plain).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": ASK}])


# --------------------------------------------------------------------------- version gate


@pytest.fixture(scope="module")
def v0101(start):
    return start("--speed", "50", "--vllm-version", "0.10.1")


@pytest.fixture(scope="module")
def v0100(start):
    return start("--speed", "50", "--vllm-version", "0.10.0")


def test_routes_are_version_gated(v0100, v0101):
    ask = {"input": ASK, "max_output_tokens": 3}
    message = {"max_tokens": 3, "messages": [{"role": "user", "content": ASK}]}
    r = httpx.post(v0100.url + "/v1/responses", json=ask, timeout=60)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert httpx.post(v0101.url + "/v1/responses", json=ask, timeout=60).status_code == 200
    for sim in (v0100, v0101):
        r = httpx.post(sim.url + "/v1/messages", json=message, timeout=60)
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


# --------------------------------------------------------------------------- tools

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_function_calls(plain):
    tool = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}
    r = oai(plain).responses.create(model=LLAMA, input="Weather in Paris?", tools=[tool], tool_choice="required")
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and "city" in json.loads(call.arguments)
    with oai(plain).responses.stream(model=LLAMA, input="Weather in Paris?", tools=[tool], tool_choice="required") as s:
        final = s.get_final_response()
    assert [o.type for o in final.output] == ["function_call"] and json.loads(final.output[0].arguments)
    c = claude(plain)
    t = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    m = c.messages.create(model=LLAMA, max_tokens=500, messages=ask, tools=[t], tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use" and m.content[-1].type == "tool_use" and "city" in m.content[-1].input
    named = {"type": "tool", "name": "get_weather"}
    with c.messages.stream(model=LLAMA, max_tokens=500, messages=ask, tools=[t], tool_choice=named) as s:
        fm = s.get_final_message()
    assert fm.stop_reason == "tool_use" and fm.content[-1].name == "get_weather" and "city" in fm.content[-1].input
