"""OpenAI's Responses API through the gateway (served through the chat path), with the openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support import LARGE, MEDIUM, SMALL


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def test_create_answers_in_the_responses_shape_with_energy(client):
    r = client.responses.with_raw_response.create(
        model=MEDIUM, instructions="Answer in one word.", input="Name a primary colour.", max_output_tokens=16
    )
    response = r.parse()
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.model == MEDIUM
    assert response.output_text  # the SDK's own join of the output_text parts
    [message] = [item for item in response.output if item.type == "message"]
    assert message.role == "assistant" and message.content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.model_extra["energy"]["joules"] > 0
    assert float(r.headers["x-gateway-energy-j"]) > 0
    assert r.headers["x-gateway-routed-model"] == MEDIUM
    assert response.store is False  # nothing is kept between requests


def test_a_short_cap_is_an_incomplete_response(client):
    response = client.responses.create(model=MEDIUM, input="Write a long story about the sea.", max_output_tokens=4)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 4


def test_stream_events_parse_and_end_with_the_completed_response(client):
    with client.responses.stream(model=MEDIUM, input="Count from one to ten.", max_output_tokens=24) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert final.output_text and final.usage.output_tokens > 0
    assert final.usage.model_extra["energy"]["joules"] > 0


def test_reasoning_is_off_by_default_and_on_when_asked(client):
    off = client.responses.with_raw_response.create(model=LARGE, input="What is 17 * 23?", max_output_tokens=64)
    assert off.headers["x-gateway-reasoning"].startswith("off")
    assert not [item for item in off.parse().output if item.type == "reasoning"]
    on = client.responses.with_raw_response.create(
        model=LARGE, input="What is 17 * 23?", max_output_tokens=400, reasoning={"effort": "high"},
        extra_headers={"x-gateway-reasoning": "on"},
    )  # fmt: skip
    assert on.headers["x-gateway-reasoning"].startswith("on")
    response = on.parse()
    [reasoning] = [item for item in response.output if item.type == "reasoning"]
    assert reasoning.content[0].text
    assert response.usage.output_tokens_details.reasoning_tokens > 0


def test_conversation_items_and_auto_routing(client):
    response = client.responses.create(
        model="auto",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello Ada."}]},
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=16,
    )
    assert response.model in (SMALL, MEDIUM, LARGE) and response.output_text


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_what_the_gateway_cannot_do_is_a_clear_400(gateway, extra, param):
    body = {"model": MEDIUM, "input": "Hi.", **extra}
    r = httpx.post(f"{gateway.url}/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_reasoning_stream_has_its_reasoning_item_first(client):
    with client.responses.stream(model=LARGE, input="Is 91 prime?", max_output_tokens=400,
                                 reasoning={"effort": "high"}, extra_headers={"x-gateway-reasoning": "on"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert [item.type for item in final.output][:1] == ["reasoning"]
    assert final.usage.output_tokens_details.reasoning_tokens > 0


def test_the_ledger_and_metrics_name_the_responses_api(gateway, client):
    client.responses.create(model=MEDIUM, input="Say hi.", max_output_tokens=8)
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'endpoint="responses"' in metrics
