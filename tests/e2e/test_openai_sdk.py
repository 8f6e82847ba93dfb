"""The official openai SDK, sync and async, against the gateway in front of simulators."""

from __future__ import annotations

import openai
import pytest

from tests.support import LARGE, MEDIUM, SMALL

PROMPT = [{"role": "user", "content": "Name three primary colours."}]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def aclient(gateway):
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_every_backend_model_with_facts(client):
    models = {m.id: m for m in client.models.list()}
    for name in (SMALL, MEDIUM, LARGE):
        assert name in models
    large = models[LARGE].model_extra
    assert large["params_b"] == 32 and large["tier"] == "large" and large["max_model_len"] > 0
    assert models[SMALL].model_extra["tier"] == "small"
    assert "auto" in models  # the routing alias is listed too


def test_chat_non_streaming(client):
    r = client.chat.completions.with_raw_response.create(model=MEDIUM, messages=PROMPT, max_tokens=20)
    completion = r.parse()
    assert completion.object == "chat.completion"
    assert completion.model == MEDIUM
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert r.headers["x-gateway-routed-model"] == MEDIUM
    assert r.headers["x-request-id"]
    assert float(r.headers["x-gateway-energy-j"]) > 0
    energy = usage.model_extra["energy"]
    assert energy["joules"] > 0 and energy["source"] in ("measured-provisional", "estimated")
    assert energy["wh"] == pytest.approx(energy["joules"] / 3600, rel=1e-3, abs=1e-6)  # wh has 6 decimals


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model=MEDIUM, messages=PROMPT, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.model_extra["energy"]["joules"] > 0


def test_streaming_without_usage_drops_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=MEDIUM, messages=PROMPT, max_tokens=8, stream=True))
    assert all(c.choices for c in chunks)  # no usage chunk the client did not ask for
    assert all(c.usage is None for c in chunks)


def test_completions_streaming_and_not(client):
    r = client.completions.create(model=MEDIUM, prompt="Once upon a time", max_tokens=12)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 12
    chunks = list(client.completions.create(model=MEDIUM, prompt="Once upon a time", max_tokens=12, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_reasoning_off_by_default_and_opt_in(client):
    # The default policy turns Qwen3's thinking off...
    off = client.chat.completions.create(model=LARGE, messages=PROMPT, max_tokens=64)
    assert not off.choices[0].message.model_extra.get("reasoning")
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    # ...and a client that asks for it gets it, under both field names, with tokens counted.
    on = client.chat.completions.create(model=LARGE, messages=PROMPT, max_tokens=256, reasoning_effort="high")
    message = on.choices[0].message.model_extra
    assert message["reasoning"] and message["reasoning_content"] == message["reasoning"]
    assert on.usage.completion_tokens_details.reasoning_tokens > 0
    assert on.usage.completion_tokens_details.reasoning_tokens <= on.usage.completion_tokens


def test_reasoning_streamed_under_both_names(client):
    chunks = list(
        client.chat.completions.create(
            model=LARGE, messages=PROMPT, max_tokens=128, reasoning_effort="high", stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.model_extra for c in chunks if c.choices]
    thinking = [d for d in deltas if d.get("reasoning")]
    assert thinking and all(d["reasoning_content"] == d["reasoning"] for d in thinking)
    # the count is exact (vLLM reports none): the same as the unary answer's, whatever the chunking
    unary = client.chat.completions.create(model=LARGE, messages=PROMPT, max_tokens=128, reasoning_effort="high")
    assert unary.choices[0].message.model_extra["reasoning"] == "".join(d["reasoning"] for d in thinking)
    expected = unary.usage.completion_tokens_details.reasoning_tokens
    assert expected > 0
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == expected


def test_auto_routes_to_a_served_model(client):
    r = client.chat.completions.with_raw_response.create(model="auto", messages=PROMPT, max_tokens=8)
    assert r.headers["x-gateway-routed-model"] in (SMALL, MEDIUM, LARGE)
    assert r.headers["x-gateway-route-reason"]
    assert 0.0 <= float(r.headers["x-gateway-adequacy"]) <= 1.0


async def test_async_client_streaming_and_not(aclient):
    r = await aclient.chat.completions.create(model=SMALL, messages=PROMPT, max_tokens=10)
    assert r.choices[0].message.content
    stream = await aclient.chat.completions.create(model=SMALL, messages=PROMPT, max_tokens=10, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts)


def test_energy_saved_by_reasoning_off_and_by_routing_is_exported(client, gateway):
    import httpx

    from tests.support import wait_until

    def saved(lever: str) -> float:
        total = 0.0
        for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
            if line.startswith("gateway_energy_saved_joules_total{") and f'lever="{lever}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = saved("reasoning")
    # Qwen3 with thinking off, and room left under max_tokens for the reasoning it would have done
    r = client.chat.completions.create(model=LARGE, messages=PROMPT, max_tokens=3000)
    assert r.choices[0].finish_reason == "stop"
    client.chat.completions.create(model="auto", messages=PROMPT, max_tokens=16)
    # counted once the request's energy is final (the meter has passed its end)
    wait_until(lambda: saved("reasoning") > before, 10, what="reasoning lever")
    assert 'lever="routing"' in httpx.get(f"{gateway.url}/metrics").text


def test_models_retrieve_one_model_or_alias(client):
    model = client.models.retrieve(LARGE)  # the name has a slash: the path takes it whole
    assert model.id == LARGE and model.model_extra["tier"] == "large"
    assert client.models.retrieve("auto").model_extra["alias_of"] == "auto"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"
