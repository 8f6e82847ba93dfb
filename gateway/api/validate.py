"""Check a client's request body the way OpenAI and vLLM do, before anything else runs.

Only what the gateway itself relies on is checked here (vLLM validates the rest and its
400s are passed on): the body is a JSON object, the required fields exist with the right
types, ``stream_options`` comes with ``stream``. Errors are 400s in OpenAI's shape naming
the offending parameter.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import bad_request


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _check_common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string.", param="model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad_request("Stream options can only be defined when `stream=True`.", param="stream_options")
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object.", param="stream_options")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise bad_request(f"'{name}' must be a positive integer.", param=name)


def check_chat(body: dict[str, Any]) -> None:
    _check_common(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"Missing required parameter: 'messages[{i}].role'.", param=f"messages[{i}].role")
        # Clients send the reasoning of earlier assistant turns under either name; vLLM >= 0.16
        # reads only `reasoning`, older ones only `reasoning_content`: send both.
        if message["role"] == "assistant":
            if "reasoning_content" in message and "reasoning" not in message:
                message["reasoning"] = message["reasoning_content"]
            elif "reasoning" in message and "reasoning_content" not in message:
                message["reasoning_content"] = message["reasoning"]


def check_completion(body: dict[str, Any]) -> None:
    _check_common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("Missing required parameter: 'prompt'.", param="prompt")
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
        raise bad_request("'prompt' must be a string, an array of strings or an array of tokens.", param="prompt")


def check_embedding(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string.", param="model")
    if body.get("input") is None and body.get("messages") is None:
        raise bad_request("Missing required parameter: 'input'.", param="input")
