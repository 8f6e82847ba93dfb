"""Error statuses and bodies as vLLM sends them, by version; request leniency as vLLM's."""

from __future__ import annotations

import httpx
import pytest

from .helpers import HI, chat

LONG = [{"role": "user", "content": "word " * 300}]


@pytest.fixture(scope="module")
def old(start):
    return start("--speed", "50", "--vllm-version", "0.10.0", "--max-model-len", "256")


@pytest.fixture(scope="module")
def mid(start):
    return start("--speed", "50", "--vllm-version", "0.12", "--max-model-len", "256")


@pytest.fixture(scope="module")
def new(start):
    return start(
        "--speed",
        "50",
        "--vllm-version",
        "0.16",
        "--max-model-len",
        "256",
        "--served-model-name",
        "qwen-small",
        "qwen3-8b",
    )


def test_unknown_model_is_a_404_flat_before_0_10_1(old):
    r = chat(old, {"model": "gpt-4o", "messages": HI})
    assert r.status_code == 404
    assert r.json() == {
        "object": "error",
        "message": "The model `gpt-4o` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def test_unknown_model_is_a_404_nested_from_0_10_1(new):
    r = chat(new, {"model": "gpt-4o", "messages": HI})
    assert r.status_code == 404
    assert r.json() == {
        "error": {"message": "The model `gpt-4o` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
    }


def test_context_length_messages_by_version(old, mid, new):
    tokens = httpx.post(new.url + "/tokenize", json={"messages": LONG}).json()["count"]
    assert tokens > 256
    r = chat(old, {"messages": LONG})
    assert r.status_code == 400 and r.json()["message"] == (
        f"This model's maximum context length is 256 tokens. However, you requested {tokens} tokens "
        f"({tokens} in the messages, 0 in the completion). Please reduce the length of the messages or completion."
    )
    r = chat(mid, {"messages": LONG})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": f"This model's maximum context length is 256 tokens. However, your request has {tokens} input "
        "tokens. Please reduce the length of the input messages.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
    r = chat(new, {"messages": LONG})
    assert r.json()["error"]["message"] == f"Input length ({tokens}) exceeds model's maximum context length (256)."


def test_prompt_plus_max_tokens_over_the_window_is_a_400(mid):
    prompt = httpx.post(mid.url + "/tokenize", json={"messages": HI}).json()["count"]
    assert chat(mid, {"messages": HI, "max_tokens": 256 - prompt}).status_code == 200
    r = chat(mid, {"messages": HI, "max_tokens": 257 - prompt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert r.json()["error"]["message"].startswith(
        f"'max_tokens' or 'max_completion_tokens' is too large: {257 - prompt}."
    )


def test_validation_errors_are_400_not_422(new):
    for body in ({"messages": HI, "max_tokens": "many"}, {"messages": "hi"}, {}, {"messages": HI, "stream": "maybe"}):
        r = chat(new, body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "Bad Request" and r.json()["error"]["code"] == 400
    r = chat(new, {"messages": HI, "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens must be at least 1, got 0."
    r = chat(new, {"messages": HI, "temperature": -1})
    assert r.status_code == 400 and "temperature must be non-negative" in r.json()["error"]["message"]


def test_model_may_be_omitted_or_empty_and_aliases_work(new):
    for model in (None, "", "qwen-small", "qwen3-8b"):
        body = {"messages": HI, "max_tokens": 2, **({} if model is None else {"model": model})}
        r = chat(new, body)
        assert r.status_code == 200 and r.json()["model"] == "qwen-small"
    assert [m["id"] for m in httpx.get(new.url + "/v1/models").json()["data"]] == ["qwen-small", "qwen3-8b"]


def test_unknown_fields_are_ignored(new):
    r = chat(new, {"messages": HI, "max_tokens": 2, "frobnicate": True, "thinking": {"type": "disabled"}})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_routes_methods_and_content_type(new):
    assert httpx.get(new.url + "/v2/nothing").status_code == 404
    r = httpx.get(new.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
    r = httpx.post(
        new.url + "/v1/chat/completions", content=b'{"messages": []}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400 and "Only 'application/json' is allowed" in r.json()["error"]["message"]
    r = httpx.post(new.url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "json_invalid" in r.json()["error"]["message"]


def test_tools_need_auto_tool_choice_like_vllm(new):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = chat(new, {"messages": HI, "tools": tools})
    assert r.status_code == 400 and "--enable-auto-tool-choice" in r.json()["error"]["message"]
    assert chat(new, {"messages": HI, "tools": tools, "tool_choice": "none", "max_tokens": 2}).status_code == 200


def test_suffix_and_embeddings_are_refused_on_a_generation_model(new):
    r = httpx.post(new.url + "/v1/completions", json={"prompt": "a", "suffix": "b"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "suffix is not currently supported"
    r = httpx.post(new.url + "/v1/embeddings", json={"input": "a"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "The model does not support Embeddings API"
