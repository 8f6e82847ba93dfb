"""The official ``openai`` SDK, sync and async, parses everything the simulator answers."""

from __future__ import annotations

import openai
import pytest

from .helpers import HI, MODEL

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def embed(start):
    return start("--model", "intfloat/e5-large-v2", "--params-b", "0.33", "--task", "embed", "--speed", "50")


def client(sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0)


def test_chat_completion(plain):
    r = client(plain).chat.completions.create(model=LLAMA, messages=HI, max_tokens=8)
    assert r.object == "chat.completion" and r.model == LLAMA
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert r.usage.completion_tokens_details is None  # vLLM does not report reasoning tokens


def test_chat_stream_with_usage(plain):
    stream = client(plain).chat.completions.create(
        model=LLAMA, messages=HI, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_reasoning_text_reaches_the_sdk(qwen):
    r = client(qwen).chat.completions.create(model=MODEL, messages=HI, max_tokens=20)
    message = r.choices[0].message
    assert message.content is None and message.model_extra["reasoning"]


def test_completions_and_models(plain):
    c = client(plain)
    r = c.completions.create(model=LLAMA, prompt="The capital of France is", max_tokens=5)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 5
    models = c.models.list().data
    assert [m.id for m in models] == [LLAMA] and models[0].owned_by == "vllm"
    assert models[0].model_extra["max_model_len"] == 32768


def test_embeddings_float_and_base64(embed):
    c = client(embed)
    default = c.embeddings.create(model="intfloat/e5-large-v2", input=["alpha", "beta"])  # SDK asks for base64
    floats = c.embeddings.create(model="intfloat/e5-large-v2", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 1024
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    assert sum(x * x for x in floats.data[1].embedding) == pytest.approx(1.0, rel=1e-6)
    assert default.usage.prompt_tokens == 2


def test_errors_map_to_sdk_exceptions(plain):
    c = client(plain)
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="no-such-model", messages=HI)
    assert err.value.body["message"] == "The model `no-such-model` does not exist."
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "word " * 40000}])


async def test_async_client_chat_and_stream(plain):
    c = openai.AsyncOpenAI(base_url=plain.url + "/v1", api_key="sim", max_retries=0)
    r = await c.chat.completions.create(model=LLAMA, messages=HI, max_tokens=5)
    assert r.usage.completion_tokens == 5
    stream = await c.chat.completions.create(model=LLAMA, messages=HI, max_tokens=5, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == r.choices[0].message.content
    completion = await c.completions.create(model=LLAMA, prompt="Hi", max_tokens=3)
    assert completion.usage.completion_tokens == 3
    await c.close()
