"""vLLM's response extensions and options beyond OpenAI's: usage rules in streams by version,
batched completion prompts, echo, prompt_logprobs, return_token_ids, /tokenizer_info, /invocations."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from .helpers import HI, chat, split_sse, stream_chat

SMALL = ["--model", "Qwen/Qwen2-1.5B-Instruct", "--params-b", "1.5", "--speed", "instant", "--no-coalesce"]


@pytest.fixture(scope="module")
def sim(start):
    return start(*SMALL, "--enable-tokenizer-info-endpoint", "--enable-prompt-tokens-details")


@pytest.fixture(scope="module")
def v020(start):
    return start(*SMALL, "--vllm-version", "0.20", "--max-logprobs", "-1")


@pytest.fixture(scope="module")
def forced(start):
    return start(*SMALL, "--enable-force-include-usage")


def completions(sim, body: dict) -> httpx.Response:
    return httpx.post(sim.url + "/v1/completions", json=body, timeout=60)


def stream_completions(sim, body: dict) -> list[dict]:
    with httpx.stream("POST", sim.url + "/v1/completions", json={"stream": True, **body}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = split_sse(r.read())
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]]


def decode(sim, ids: list[int]) -> str:
    return httpx.post(sim.url + "/detokenize", json={"tokens": ids}).json()["prompt"]


def encode(sim, prompt: str) -> list[int]:
    return httpx.post(sim.url + "/tokenize", json={"prompt": prompt}).json()["tokens"]


# --- usage in streams ---------------------------------------------------------------------------


def test_empty_stream_options_give_usage_before_0_18_and_none_after(sim, v020, forced):
    body = {"messages": HI, "max_tokens": 3, "stream_options": {}}
    old, _ = stream_chat(sim, body)
    assert old[-1]["choices"] == [] and old[-1]["usage"]["completion_tokens"] == 3
    new, _ = stream_chat(v020, body)
    assert all("usage" not in e for e in new) and all(e["choices"] for e in new)
    # --enable-force-include-usage: the usage chunk comes though nobody asked; choice chunks carry none
    events, _ = stream_chat(forced, {"messages": HI, "max_tokens": 3})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 3
    assert all("usage" not in e for e in events[:-1])
    # stream_options={} on a non-streaming request is no error (vLLM tests the object's truth)
    assert chat(sim, {"messages": HI, "max_tokens": 2, "stream_options": {}}).status_code == 200


def test_prompt_tokens_details_only_with_cache_hits(sim):
    # --enable-prompt-tokens-details reports cached_tokens only when the prefix cache hit (never here)
    r = chat(sim, {"messages": HI, "max_tokens": 2})
    assert r.json()["usage"]["prompt_tokens_details"] is None


# --- completions: batches, echo, prompt logprobs, token ids -------------------------------------


def test_a_list_of_prompts_gives_one_choice_per_prompt_in_order(sim):
    prompts = ["Hello, my name is", "The capital of France is", "Hello, my name is"]
    r = completions(sim, {"prompt": prompts, "max_tokens": 5, "n": 2, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and [c["index"] for c in body["choices"]] == list(range(6))
    texts = [c["text"] for c in body["choices"]]
    assert texts[0] == texts[4] and texts[1] == texts[5] and texts[0] != texts[1]
    prompt_tokens = sum(len(encode(sim, p)) for p in prompts)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + 30,
        "completion_tokens": 30,
        "prompt_tokens_details": None,
    }
    events = stream_completions(sim, {"prompt": [[1, 2, 3], [1, 2, 3]], "max_tokens": 4})
    streamed = ["", ""]
    for event in events:
        assert len(event["choices"]) == 1
        streamed[event["choices"][0]["index"]] += event["choices"][0]["text"]
    assert streamed[0] == streamed[1] != ""


def test_prompt_checks_use_vllm_wording(sim):
    r = completions(sim, {"prompt": [999999], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Token id 999999 is out of vocabulary"
    for prompt in (None, []):
        r = completions(sim, {"prompt": prompt, "max_tokens": 2})
        message = r.json()["error"]["message"]
        assert r.status_code == 400 and message == "Either prompt or prompt_embeds must be provided and non-empty."


def test_echo_prepends_the_prompt_and_its_logprobs(sim):
    r = completions(sim, {"prompt": "Hello, my name is", "max_tokens": 5, "echo": True, "logprobs": 1})
    choice = r.json()["choices"][0]
    assert choice["text"].startswith("Hello, my name is")
    lp = choice["logprobs"]
    n_prompt = len(encode(sim, "Hello, my name is"))
    assert len(lp["tokens"]) == n_prompt + 5 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(1 <= len(top) <= 2 for top in lp["top_logprobs"][1:])
    assert lp["text_offset"][:2] == [0, len("Hello")]
    events = stream_completions(sim, {"prompt": "Hello, my name is", "max_tokens": 3, "echo": True})
    assert events[0]["choices"][0]["text"].startswith("Hello, my name is")


def test_prompt_logprobs_list_the_prompt_tokens(sim, v020):
    r = completions(sim, {"prompt": ["A robot may not injure", "My name is"], "prompt_logprobs": 2, "max_tokens": 2})
    for choice, prompt in zip(r.json()["choices"], ["A robot may not injure", "My name is"]):
        ids = encode(sim, prompt)
        plp = choice["prompt_logprobs"]
        assert plp[0] is None and len(plp) == len(ids)
        for tid, entry in zip(ids[1:], plp[1:]):
            assert str(tid) in entry and len(entry) in (2, 3)
            assert sorted(v["rank"] for v in entry.values())[:2] == [1, 2]
    body = {"messages": HI, "max_tokens": 2}
    one = chat(sim, {**body, "prompt_logprobs": 0}).json()["prompt_logprobs"]
    assert one[0] is None and all(len(e) == 1 for e in one[1:])
    assert chat(sim, body).json()["prompt_logprobs"] is None
    # -1 (the whole vocabulary) needs --max-logprobs; and no prompt logprobs in a stream
    r = chat(sim, {**body, "prompt_logprobs": -1})
    assert r.status_code == 400 and "greater than max allowed: 20" in r.json()["error"]["message"]
    r = chat(sim, {**body, "prompt_logprobs": 1, "stream": True})
    assert r.status_code == 400 and "not available when `stream=True`" in r.json()["error"]["message"]
    r = chat(v020, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "prompt_logprobs": -1})
    assert r.status_code == 200 and all(len(e) >= 151936 for e in r.json()["prompt_logprobs"][1:])


def test_return_token_ids_decode_to_the_prompt_and_the_answer(sim):
    prompt = "Complete this sentence with emojis: I love coding 🚀"
    r = completions(sim, {"prompt": prompt, "max_tokens": 8, "return_token_ids": True, "logprobs": 0})
    choice = r.json()["choices"][0]
    assert decode(sim, choice["prompt_token_ids"]) == prompt
    assert decode(sim, choice["token_ids"]) == choice["text"] and len(choice["token_ids"]) == 8
    plain = completions(sim, {"prompt": prompt, "max_tokens": 2}).json()["choices"][0]
    assert plain["prompt_token_ids"] is None and plain["token_ids"] is None
    # return_tokens_as_token_ids: logprobs name tokens by id
    r = completions(sim, {"prompt": prompt, "max_tokens": 4, "logprobs": 1, "return_tokens_as_token_ids": True,
                          "return_token_ids": True})  # fmt: skip
    choice = r.json()["choices"][0]
    assert [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]] == choice["token_ids"]
    # chat: prompt ids on the response (and on the first chunk only), output ids per choice / chunk
    body = {"messages": [{"role": "user", "content": "I love cats 🐱"}], "max_tokens": 2000, "return_token_ids": True}
    answer = chat(sim, body).json()
    assert decode(sim, answer["prompt_token_ids"]).endswith("I love cats 🐱<|im_end|>\n<|im_start|>assistant\n")
    message = answer["choices"][0]["message"]["content"]
    assert decode(sim, answer["choices"][0]["token_ids"]) == message + "<|im_end|>"
    events, _ = stream_chat(sim, body)
    assert events[0]["prompt_token_ids"] == answer["prompt_token_ids"]
    assert all("prompt_token_ids" not in e for e in events[1:])
    ids = [t for e in events[1:] for t in e["choices"][0].get("token_ids", [])]
    assert decode(sim, ids) == message + "<|im_end|>"


def test_chat_echo_repeats_the_final_message(sim):
    saying = "Here is a common saying about apple. An apple a day, keeps"
    messages = [{"role": "user", "content": "tell me a common saying"}, {"role": "assistant", "content": saying}]
    body = {"messages": messages, "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 5}
    echoed = chat(sim, {**body, "echo": True}).json()["choices"][0]["message"]["content"]
    plain = chat(sim, body).json()["choices"][0]["message"]["content"]
    assert echoed == saying + plain
    events, _ = stream_chat(sim, {**body, "echo": True})
    assert events[1]["choices"][0]["delta"] == {"content": saying}


def test_logprobs_as_a_string_and_the_whole_vocabulary(v020):
    body = {"messages": HI, "max_tokens": 1, "logprobs": "true", "top_logprobs": -1}
    r = chat(v020, body)
    assert r.status_code == 200
    assert len(r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 151936


# --- endpoints -----------------------------------------------------------------------------------


def test_tokenizer_info_only_when_enabled(sim, v020):
    info = httpx.get(sim.url + "/tokenizer_info").json()
    assert info["tokenizer_class"] and info["eos_token"] == "<|im_end|>" and info["model_max_length"] >= 32768
    assert "<|im_start|>" in info["chat_template"]
    assert httpx.get(v020.url + "/tokenizer_info").status_code == 404


def test_invocations_dispatch_by_body(sim):
    body = {"messages": HI, "max_tokens": 5, "temperature": 0}
    direct = chat(sim, body).json()
    via = httpx.post(sim.url + "/invocations", json=body).json()
    assert via.keys() == direct.keys() and via["choices"] == direct["choices"]
    text = httpx.post(sim.url + "/invocations", json={"prompt": "Hi", "max_tokens": 2}).json()
    assert text["object"] == "text_completion"
    r = httpx.post(sim.url + "/invocations", json={"nothing": 1})
    assert r.status_code == 400 and re.search("Cannot find suitable handler", r.json()["error"]["message"])
