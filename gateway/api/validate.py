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

# OpenAI's ServiceTier: "flex" waits for room (api/flex.py); "auto" takes the policy's default;
# the others are served as "default" (a local GPU has no faster lane to sell).
SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast"})
MAX_DEPTH = 64  # nesting of objects and arrays; orjson cannot write back past 254, tool schemas need ~10


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(body):  # the count is a cheap upper bound
        raise bad_request(f"The request body nests objects and arrays more than {MAX_DEPTH} deep.")
    return body


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


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
    tier = body.get("service_tier")
    if tier is not None and (not isinstance(tier, str) or tier not in SERVICE_TIERS):
        raise bad_request(f"'service_tier' must be one of {', '.join(sorted(SERVICE_TIERS))}.", param="service_tier")
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
        content = message.get("content")
        if isinstance(content, list):
            _check_parts(content, f"messages[{i}].content")
        elif content is not None and not isinstance(content, str):
            raise bad_request(f"'messages[{i}].content' must be a string or an array of content parts.",
                              param=f"messages[{i}].content")  # fmt: skip
        calls = message.get("tool_calls")
        if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
            raise bad_request(f"'messages[{i}].tool_calls' must be an array of tool call objects.",
                              param=f"messages[{i}].tool_calls")  # fmt: skip
        # Clients send the reasoning of earlier assistant turns under either name; vLLM >= 0.16
        # reads only `reasoning`, older ones only `reasoning_content`: send both.
        if message["role"] == "assistant":
            if "reasoning_content" in message and "reasoning" not in message:
                message["reasoning"] = message["reasoning_content"]
            elif "reasoning" in message and "reasoning_content" not in message:
                message["reasoning_content"] = message["reasoning"]


def _check_parts(parts: list[Any], where: str) -> None:
    """Content parts as OpenAI defines them: objects with a string ``type``; a text part's
    ``text`` is a string (the gateway counts and routes on it)."""
    for j, part in enumerate(parts):
        name = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"'{name}' must be an object with a string 'type'.", param=name)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"'{name}.text' must be a string.", param=f"{name}.text")


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
