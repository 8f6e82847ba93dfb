"""What agent clients send through the gateway: tools (auto, required, named; unary and streamed),
structured outputs, and tool calls over the Responses and Messages APIs."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pydantic
import pytest

from tests.support import MEDIUM

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                       "required": ["city", "unit"]},
    },
}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def test_a_tool_call_comes_back_whole_and_valid(client):
    r = client.chat.completions.with_raw_response.create(model=MEDIUM, messages=ASK, tools=[WEATHER], max_tokens=200)
    choice = r.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert float(r.headers["x-gateway-energy-j"]) > 0


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_tool_calls_assemble_through_the_relay(client, tool_choice):
    with client.chat.completions.stream(model=MEDIUM, messages=ASK, tools=[WEATHER], tool_choice=tool_choice,
                                        max_tokens=200) as stream:  # fmt: skip
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_structured_output_parses_into_the_model(client):
    class City(pydantic.BaseModel):
        name: str
        population: int

    completion = client.chat.completions.parse(model=MEDIUM, messages=[{"role": "user", "content": "Name a city."}],
                                               response_format=City, max_tokens=200)  # fmt: skip
    assert isinstance(completion.choices[0].message.parsed, City)


def test_responses_function_calls_and_their_output(client):
    tool = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
            "parameters": WEATHER["function"]["parameters"]}  # fmt: skip
    first = client.responses.create(model=MEDIUM, input="What is the weather in Paris?", tools=[tool],
                                    max_output_tokens=200)  # fmt: skip
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"]
    with client.responses.stream(model=MEDIUM, tools=[tool], max_output_tokens=200, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"},
    ]) as stream:  # fmt: skip
        final = stream.get_final_response()
    assert final.output_text  # the tool's result answered in text: the agent loop ends


def test_messages_tool_use_round_trip(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    tool = {"name": "get_weather", "description": "Get the current weather for a city",
            "input_schema": WEATHER["function"]["parameters"]}  # fmt: skip
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    with client.messages.stream(model=MEDIUM, max_tokens=200, tools=[tool], messages=ask) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    jsonschema.validate(use.input, tool["input_schema"])
    reply = client.messages.create(model=MEDIUM, max_tokens=200, tools=[tool], messages=[
        *ask, {"role": "assistant", "content": message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}]},
    ])  # fmt: skip
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.content[0].type == "text"
