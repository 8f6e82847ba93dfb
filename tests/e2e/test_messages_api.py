"""Anthropic's Messages API through the gateway (served through the chat path), with the anthropic SDK."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from gateway.policy.keys import hash_key
from tests.support import LARGE, MEDIUM, GatewayProcess, backend_entry, base_config, write_config


@pytest.fixture
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_create_answers_in_anthropic_shape_with_energy(client):
    r = client.messages.with_raw_response.create(
        model=MEDIUM, max_tokens=16, system="Answer in one word.",
        messages=[{"role": "user", "content": "Name a primary colour."}],
    )  # fmt: skip
    message = r.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == MEDIUM and message.stop_reason in ("end_turn", "max_tokens")
    [text] = [block for block in message.content if block.type == "text"]
    assert text.text
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16
    assert message.usage.model_extra["energy"]["joules"] > 0
    assert float(r.headers["x-gateway-energy-j"]) > 0 and r.headers["x-gateway-routed-model"] == MEDIUM


def test_a_short_cap_stops_with_max_tokens(client):
    message = client.messages.create(model=MEDIUM, max_tokens=4,
                                      messages=[{"role": "user", "content": "Write a long story."}])  # fmt: skip
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4


def test_stream_events_parse_into_the_final_message(client):
    with client.messages.stream(model=MEDIUM, max_tokens=24,
                                messages=[{"role": "user", "content": "Count to ten."}]) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text and final.usage.output_tokens > 0
    [delta] = [event for event in events if event.type == "message_delta"]  # the energy rides on its usage
    assert delta.usage.model_extra["energy"]["joules"] > 0


def test_thinking_is_off_by_default_and_on_when_asked(client):
    ask = [{"role": "user", "content": "What is 17 * 23?"}]
    off = client.messages.with_raw_response.create(model=LARGE, max_tokens=64, messages=ask)
    assert off.headers["x-gateway-reasoning"].startswith("off")
    assert [block.type for block in off.parse().content] == ["text"]
    on = client.messages.with_raw_response.create(
        model=LARGE, max_tokens=600, messages=ask, thinking={"type": "enabled", "budget_tokens": 512},
        extra_headers={"x-gateway-reasoning": "on"},
    )  # fmt: skip
    assert on.headers["x-gateway-reasoning"].startswith("on")
    blocks = on.parse().content
    assert blocks[0].type == "thinking" and blocks[0].thinking
    with client.messages.stream(model=LARGE, max_tokens=600, messages=ask,
                                thinking={"type": "enabled", "budget_tokens": 512},
                                extra_headers={"x-gateway-reasoning": "on"}) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[-1].type == "text"


def test_tool_turns_translate_both_ways(client):
    """A conversation that already used a tool: the assistant's tool_use and the user's tool_result
    reach the backend as a chat tool call and its answer."""
    message = client.messages.create(
        model=MEDIUM, max_tokens=16,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}]},
        ],
    )  # fmt: skip
    assert message.content and message.content[0].type == "text"


def test_errors_are_in_anthropic_shape(gateway):
    r = httpx.post(f"{gateway.url}/v1/messages", json={"model": MEDIUM, "messages": [{"role": "user", "content": "x"}]},
                   timeout=30)  # fmt: skip
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: a positive integer is required."}}  # fmt: skip
    r = httpx.post(f"{gateway.url}/v1/messages", timeout=30, json={
        "model": MEDIUM, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    })  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_anthropic_key_header_is_a_key(sims, tmp_path):
    keys = {"required": True, "keys": [{"name": "ann", "team": "t", "hash": hash_key("sk-ann")}]}
    config = base_config(tmp_path, [backend_entry("m", sims[MEDIUM])], keys=keys)
    with GatewayProcess(write_config(tmp_path, config)) as gw:
        ask = {"model": MEDIUM, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        good = anthropic.Anthropic(base_url=gw.url, api_key="sk-ann", max_retries=0)
        assert good.messages.create(**ask).type == "message"  # sent as x-api-key
        with pytest.raises(anthropic.AuthenticationError) as err:
            anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(**ask)
        assert err.value.status_code == 401 and err.value.body["error"]["type"] == "authentication_error"
