"""Tool calling, n > 1, logprobs and structured outputs, as vLLM's chat/completions serve them."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from gateway.sim.process import SimStartError, start_sim
from gateway.sim.schema import schema_instance

from .helpers import HI, chat, split_sse, stream_chat

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
TOOL_ID = re.compile(r"^chatcmpl-tool-[0-9a-f]{32}$")
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "detail": {"type": "object", "properties": {"hourly": {"type": "boolean"}}, "required": ["hourly"]},
            },
            "required": ["city", "unit", "days", "detail"],
            "additionalProperties": False,
        },
    },
}
STOCKS = {
    "type": "function",
    "function": {
        "name": "stock_price",
        "description": "Look up the latest stock price of a company",
        "parameters": {
            "type": "object",
            "properties": {"ticker": {"type": "string"}, "exchanges": {"type": "array", "items": {"type": "string"}}},
            "required": ["ticker", "exchanges"],
        },
    },
}
TOOLS = [WEATHER, STOCKS]
ASK_WEATHER = [{"role": "user", "content": "What's the weather like in Paris today?"}]
ASK_BOTH = [{"role": "user", "content": "Tell me the weather in Oslo and the stock price of ACME."}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def tooled(start):
    """A plain model with tool calling on, one SSE event per token."""
    return start("--model", LLAMA, "--params-b", "8", "--speed", "instant", "--no-coalesce", *TOOL_FLAGS)


@pytest.fixture(scope="module")
def thinker(start):
    return start("--reasoning", "qwen3", "--speed", "instant", *TOOL_FLAGS)


@pytest.fixture(scope="module")
def v20(start):
    return start("--speed", "instant", "--vllm-version", "0.20", *TOOL_FLAGS)


@pytest.fixture(scope="module")
def v12(start):
    return start("--speed", "instant", "--vllm-version", "0.12")


def client(sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sim", max_retries=0)


def check_call(call: dict) -> dict:
    assert TOOL_ID.match(call["id"]) and call["type"] == "function"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, SCHEMAS[call["function"]["name"]])
    return arguments


# ---------------------------------------------------------------- tool_choice "auto"


def test_auto_calls_the_tool_the_user_asks_for(tooled):
    r = chat(tooled, {"messages": ASK_WEATHER, "tools": TOOLS})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None  # nothing before the <tool_call> block
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_call(call)
    assert r.json()["usage"]["completion_tokens"] > 10  # the tool call is generated text


def test_auto_answers_in_text_when_no_tool_fits_or_a_tool_just_answered(tooled):
    r = chat(tooled, {"messages": [{"role": "user", "content": "Tell me a joke."}], "tools": TOOLS, "max_tokens": 30})
    message = r.json()["choices"][0]["message"]
    assert message["content"] and message["tool_calls"] == []
    assert r.json()["choices"][0]["finish_reason"] == "length"
    first = chat(tooled, {"messages": ASK_WEATHER, "tools": TOOLS}).json()["choices"][0]["message"]
    history = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": first["tool_calls"]},
        {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "18 C, sunny"},
    ]
    r = chat(tooled, {"messages": history, "tools": TOOLS, "max_tokens": 20})
    assert r.json()["choices"][0]["message"]["tool_calls"] == [] and r.json()["choices"][0]["message"]["content"]


def test_the_history_of_tool_calls_is_part_of_the_prompt(tooled):
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    bare = [*ASK_WEATHER, {"role": "assistant", "content": None}]
    with_call = [*ASK_WEATHER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    count = [httpx.post(tooled.url + "/tokenize", json={"messages": m}).json()["count"] for m in (bare, with_call)]
    assert count[1] >= count[0] + 10


def test_parallel_calls_and_parallel_tool_calls_false(tooled):
    both = chat(tooled, {"messages": ASK_BOTH, "tools": TOOLS}).json()
    calls = both["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "stock_price"]
    for c in calls:
        check_call(c)
    one = chat(tooled, {"messages": ASK_BOTH, "tools": TOOLS, "parallel_tool_calls": False}).json()
    assert [c["function"]["name"] for c in one["choices"][0]["message"]["tool_calls"]] == ["get_weather"]
    # vLLM filters the calls after generation: the model wrote (and bills) both
    assert one["usage"] == both["usage"]
    events, _ = stream_chat(tooled, {"messages": ASK_BOTH, "tools": TOOLS, "parallel_tool_calls": False})
    indexes = {d["index"] for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])}
    assert indexes == {0}


def test_streamed_tool_call_deltas_assemble_to_the_unary_call(tooled):
    body = {"messages": ASK_WEATHER, "tools": TOOLS, "stream_options": {"include_usage": True}}
    events, _ = stream_chat(tooled, body)
    deltas = [d for e in events[:-1] for d in e["choices"][0]["delta"].get("tool_calls", [])]
    head = deltas[0]  # the name comes first: index, id, type and the function's name
    assert set(head) == {"index", "id", "type", "function"} and head["function"] == {"name": "get_weather"}
    assert TOOL_ID.match(head["id"]) and head["index"] == 0 and head["type"] == "function"
    pieces = [d["function"]["arguments"] for d in deltas[1:]]
    assert len(pieces) > 3 and all(set(d) == {"index", "function"} and d["index"] == 0 for d in deltas[1:])
    unary = chat(tooled, {"messages": ASK_WEATHER, "tools": TOOLS}).json()
    assert "".join(pieces) == unary["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    last = events[-2]["choices"][0]
    assert last["finish_reason"] == "tool_calls" and last["delta"] == {}
    assert all(c["finish_reason"] is None for e in events[:-2] for c in e["choices"])
    assert events[-1]["usage"] == {k: v for k, v in unary["usage"].items() if k != "prompt_tokens_details"}


def test_openai_sdk_agent_loop(tooled):
    c = client(tooled)
    messages: list = list(ASK_WEATHER)
    r = c.chat.completions.create(model=LLAMA, messages=messages, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS["get_weather"])
    messages += [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id,
                                                                      "content": "18 C"}]  # fmt: skip
    final = c.chat.completions.create(model=LLAMA, messages=messages, tools=TOOLS, max_tokens=16)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    # streaming, assembled by the SDK's helper
    with c.chat.completions.stream(model=LLAMA, messages=ASK_BOTH, tools=TOOLS) as stream:
        done = stream.get_final_completion()
    names = [t.function.name for t in done.choices[0].message.tool_calls]
    assert names == ["get_weather", "stock_price"] and done.choices[0].finish_reason == "tool_calls"
    for t in done.choices[0].message.tool_calls:
        jsonschema.validate(json.loads(t.function.arguments), SCHEMAS[t.function.name])


def test_a_reasoning_model_thinks_then_calls(thinker):
    r = chat(thinker, {"messages": ASK_WEATHER, "tools": TOOLS, "max_tokens": 20000}).json()
    message = r["choices"][0]["message"]
    assert message["reasoning"] and message["content"] == "\n\n"  # Qwen3 writes </think>\n\n<tool_call>
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    check_call(message["tool_calls"][0])


# ---------------------------------------------------------------- named and required


def test_named_tool_choice_works_without_the_auto_flags(plain):
    named = {"type": "function", "function": {"name": "stock_price"}}
    r = chat(plain, {"messages": HI, "tools": TOOLS, "tool_choice": named}).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop"  # vLLM, as OpenAI: "stop" for a named tool call
    assert choice["message"]["content"] == ""
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "stock_price"
    arguments = check_call(call)
    events, _ = stream_chat(plain, {"messages": HI, "tools": TOOLS, "tool_choice": named})
    deltas = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "stock_price" and TOOL_ID.match(deltas[0]["id"])
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == arguments
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_required_always_calls_without_the_auto_flags(plain):
    r = chat(plain, {"messages": [{"role": "user", "content": "Hello!"}], "tools": TOOLS, "tool_choice": "required"})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == ""
    (call,) = choice["message"]["tool_calls"]  # nothing matched: the first tool
    assert call["function"]["name"] == "get_weather"
    check_call(call)
    events, _ = stream_chat(plain, {"messages": ASK_BOTH, "tools": TOOLS, "tool_choice": "required"})
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    calls: dict[int, dict] = {}
    for e in events:
        for d in e["choices"][0]["delta"].get("tool_calls", []):
            slot = calls.setdefault(d["index"], {"name": "", "arguments": ""})
            slot["name"] += d["function"].get("name", "")
            slot["arguments"] += d["function"].get("arguments", "")
    assert [c["name"] for c in calls.values()] == ["get_weather", "stock_price"]
    for c in calls.values():
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


def test_tool_choice_none_and_auto_without_the_flags(plain):
    r = chat(plain, {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "none", "max_tokens": 5})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"] == []
    r = chat(plain, {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "auto"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    )


def test_tool_request_errors(tooled, v12):
    def error(sim, **body):
        r = chat(sim, {"messages": HI, **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    e = error(tooled, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e["message"] == (
        "The tool specified in `tool_choice` does not match any of the specified `tools` (parameter=tool_choice)"
    )
    assert e["type"] == "BadRequestError" and e["param"] == "tool_choice"
    e = error(tooled, tool_choice="required")
    assert e["message"] == "When using `tool_choice`, `tools` must be set. (parameter=tool_choice)"
    e = error(tooled, tools=TOOLS, tool_choice="sometimes")
    assert e["message"].startswith("Invalid value for `tool_choice`: sometimes!")
    e = error(tooled, tools=TOOLS, tool_choice={"type": "function"})
    assert e["message"].startswith("Invalid value for `function`: `None` in `tool_choice`!")
    e = error(tooled, tools=[{"type": "function", "function": {"description": "no name"}}])
    assert e["type"] == "Bad Request"
    # before 0.16: pydantic's error list from the request validator
    e = error(v12, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e["type"] == "Bad Request" and "Value error, The tool specified in `tool_choice`" in e["message"]


def test_an_empty_tools_list_is_refused_from_0_20(plain, v20):
    r = chat(v20, {"messages": HI, "tools": []})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "`tools` must not be an empty array. Either provide at least one tool or omit the field "
        "entirely. (parameter=tools)",
        "type": "BadRequestError",
        "param": "tools",
        "code": 400,
    }
    assert chat(plain, {"messages": HI, "tools": [], "max_tokens": 3}).status_code == 200  # 0.16 took it


def test_auto_tool_choice_needs_a_parser_to_start():
    with pytest.raises(SimStartError, match="requires --tool-call-parser"):
        start_sim(["--model", LLAMA, "--params-b", "8", "--enable-auto-tool-choice"])


# ---------------------------------------------------------------- schema instances


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "minLength": 12, "maxLength": 14}},
         "required": ["a"]},
        {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 10, "maximum": 10.75}},
         "required": ["n"]},
        {"type": "object", "properties": {"k": {"type": "integer", "multipleOf": 5, "minimum": 7, "maximum": 14}},
         "required": ["k"]},
        {"type": "array", "items": {"type": "integer", "enum": [3, 4, 5]}, "minItems": 3, "uniqueItems": True},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False},
        {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"x": {"const": 7}}, "required": ["x"]}]},
        {"type": ["null", "string"], "format": "date-time"},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                   {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
        {"type": "object", "minProperties": 2, "properties": {"p": {"type": "string"}}, "additionalProperties": True},
        {"$defs": {"Item": {"type": "object", "properties": {"id": {"type": "integer", "minimum": -3, "maximum": -1}},
                            "required": ["id"]}},
         "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
         "required": ["items"]},
        {"type": "object", "properties": {"tree": {"$ref": "#"}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 3,
         "exclusiveMinimum": True, "maximum": 4},
    ],
)  # fmt: skip
def test_schema_instances_validate(schema):
    for salt in ("a", "b", "c"):
        jsonschema.validate(schema_instance(schema, salt), schema, format_checker=jsonschema.FormatChecker())


# ---------------------------------------------------------------- n > 1


def test_n_choices_chat_unary_and_streamed(plain):
    body = {"messages": [{"role": "user", "content": "Explain caching."}], "max_tokens": 25, "seed": 3}
    one = chat(plain, body).json()
    two = chat(plain, {**body, "n": 3}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in two["choices"]]
    assert len(set(texts)) == 3 and texts[0] == one["choices"][0]["message"]["content"]
    assert two["usage"]["completion_tokens"] == 75 and two["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    events, _ = stream_chat(plain, {**body, "n": 3, "stream_options": {"include_usage": True}})
    assert [e["choices"][0]["index"] for e in events[:3]] == [0, 1, 2]  # every role chunk first
    assert all(e["choices"][0]["delta"] == {"role": "assistant", "content": ""} for e in events[:3])
    streamed, finishes = ["", "", ""], []
    for e in events[3:-1]:
        (c,) = e["choices"]
        streamed[c["index"]] += c["delta"].get("content", "")
        if c["finish_reason"]:
            finishes.append(c["index"])
    assert streamed == texts and sorted(finishes) == [0, 1, 2]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 75


def test_n_choices_completions_unary_and_streamed(plain):
    body = {"prompt": "Once upon a time", "max_tokens": 12, "n": 2}
    r = httpx.post(plain.url + "/v1/completions", json=body, timeout=60).json()
    texts = [c["text"] for c in r["choices"]]
    assert [c["index"] for c in r["choices"]] == [0, 1] and texts[0] != texts[1]
    assert r["usage"]["completion_tokens"] == 24
    with httpx.stream("POST", plain.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        events = [json.loads(e) for e in split_sse(s.read())[:-1]]
    streamed = ["", ""]
    for e in events:
        streamed[e["choices"][0]["index"]] += e["choices"][0]["text"]
    assert streamed == texts
    assert sum(e["choices"][0]["finish_reason"] == "length" for e in events) == 2


def test_n_is_checked_like_vllm(plain):
    r = chat(plain, {"messages": HI, "n": 0})
    assert r.status_code == 400 and r.json()["error"]["message"] == "n must be at least 1, got 0."
    r = chat(plain, {"messages": HI, "n": 16385})
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "n must be at most 16384, got 16385. To increase this limit, set the VLLM_MAX_N_SEQUENCES "
        "environment variable."
    )


def test_n_choices_are_sequences_in_the_batch(start):
    sim = start("--speed", "instant")
    r = chat(sim, {"messages": HI, "max_tokens": 8, "n": 2}, headers={"X-Request-Id": "pair"})
    rows = httpx.get(sim.url + "/debug/energy").json()["requests"]
    assert rows["pair"]["completion_tokens"] == rows["pair/1"]["completion_tokens"] == 8
    assert r.json()["usage"]["completion_tokens"] == 16


# ---------------------------------------------------------------- logprobs


def check_top(entry: dict, k: int) -> None:
    assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
    top = entry["top_logprobs"]
    assert len(top) == k
    if k:
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True) and len({t["token"] for t in top}) == k


def test_chat_logprobs_unary_and_streamed(plain):
    body = {"messages": HI, "max_tokens": 12, "logprobs": True, "top_logprobs": 5}
    r = chat(plain, body).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] == 12
    for entry in content:
        check_top(entry, 5)
    assert "".join(e["token"] for e in content) == r["choices"][0]["message"]["content"]
    events, _ = stream_chat(plain, body)
    streamed = [x for e in events for c in e["choices"] if c["logprobs"] for x in c["logprobs"]["content"]]
    assert streamed == content
    bare = chat(plain, {"messages": HI, "max_tokens": 3, "logprobs": True}).json()["choices"][0]["logprobs"]["content"]
    for entry in bare:
        check_top(entry, 0)
    sdk = client(plain).chat.completions.create(model=LLAMA, messages=HI, max_tokens=4, logprobs=True, top_logprobs=2)
    assert len(sdk.choices[0].logprobs.content) == 4 and len(sdk.choices[0].logprobs.content[0].top_logprobs) == 2


def test_completion_logprobs_unary_and_streamed(plain):
    body = {"prompt": "The capital of France is", "max_tokens": 8, "logprobs": 3}
    r = httpx.post(plain.url + "/v1/completions", json=body, timeout=60).json()
    lp = r["choices"][0]["logprobs"]
    assert list(lp) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 8
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert value <= 0 and len(top) == 3 and top[token] == value == max(top.values())
    with httpx.stream("POST", plain.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        events = [json.loads(e) for e in split_sse(s.read())[:-1]]
    tokens = [t for e in events for t in e["choices"][0]["logprobs"]["tokens"]]
    offsets = [t for e in events for t in e["choices"][0]["logprobs"]["text_offset"]]
    assert tokens == lp["tokens"] and offsets == lp["text_offset"]
    zero = httpx.post(plain.url + "/v1/completions", json={**body, "logprobs": 0}, timeout=60).json()
    assert all(len(top) == 1 for top in zero["choices"][0]["logprobs"]["top_logprobs"])


def test_logprobs_limits(plain, v12):
    r = chat(plain, {"messages": HI, "logprobs": True, "top_logprobs": 21})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "Requested sample logprobs of 21, which is greater than max allowed: 20 "
        "(parameter=logprobs, value=21)",
        "type": "BadRequestError",
        "param": "logprobs",
        "code": 400,
    }
    r = chat(plain, {"messages": HI, "top_logprobs": 2})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)"
    )
    assert chat(plain, {"messages": HI, "top_logprobs": 0, "max_tokens": 2}).status_code == 200
    r = httpx.post(plain.url + "/v1/completions", json={"prompt": "a", "logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = httpx.post(plain.url + "/v1/completions", json={"prompt": "a", "logprobs": -1})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("`logprobs` must be a positive value.")
    r = chat(v12, {"messages": HI, "logprobs": True, "top_logprobs": 25})
    assert r.json()["error"]["message"] == "Requested sample logprobs of 25, which is greater than max allowed: 20"


# ---------------------------------------------------------------- structured outputs


class Booking(BaseModel):
    name: str
    guests: int
    vegetarian: bool
    dishes: list[str]


def test_json_object_and_json_schema(plain):
    r = chat(plain, {"messages": HI, "response_format": {"type": "json_object"}}).json()
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)
    assert r["choices"][0]["finish_reason"] == "stop"
    schema = Booking.model_json_schema()
    rf = {"type": "json_schema", "json_schema": {"name": "booking", "schema": schema}}
    for n, choice in enumerate(chat(plain, {"messages": HI, "response_format": rf, "n": 2}).json()["choices"]):
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        assert choice["index"] == n
    parsed = client(plain).chat.completions.parse(model=LLAMA, messages=HI, response_format=Booking)
    assert isinstance(parsed.choices[0].message.parsed, Booking)


def test_structured_outputs_and_guided_fields(plain):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for extra in ({"structured_outputs": {"json": schema}}, {"guided_json": json.dumps(schema)}):
        content = chat(plain, {"messages": HI, **extra}).json()["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), schema)
    content = chat(plain, {"messages": HI, "structured_outputs": {"choice": ["yes", "no"]}}).json()
    assert content["choices"][0]["message"]["content"] in ("yes", "no")
    r = httpx.post(plain.url + "/v1/completions", json={"prompt": "JSON:", "response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.json()["choices"][0]["text"]), dict)


def test_bad_response_formats_are_400(plain):
    for rf in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
        {"type": "json_schema"},
        {"type": "yaml"},
        "json",
    ):
        r = chat(plain, {"messages": HI, "response_format": rf})
        assert r.status_code == 400, rf
    r = chat(plain, {"messages": HI, "response_format": {"type": "json_schema"}})
    assert r.json()["error"]["message"].startswith("When response_format type is 'json_schema'")
    r = chat(plain, {"messages": HI, "structured_outputs": {"json": {}, "choice": ["a"]}})
    assert r.status_code == 400 and "one kind of constraints" in r.json()["error"]["message"]
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = chat(plain, {"messages": HI, "structured_outputs": {"json": {}}, "tools": TOOLS, "tool_choice": named})
    assert r.status_code == 400
    message = "You can only either use constraints for structured outputs or tools, not both."
    assert r.json()["error"]["message"] == message
