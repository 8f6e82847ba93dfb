"""``POST /v1/messages`` (the Anthropic Messages API) as vLLM serves it; the route exists from 0.11
in the simulator (a best guess at when vLLM shipped it: check before relying on it). Built on the
chat generation (``chatbridge.py``).

- Request: ``model``, ``max_tokens`` (required), ``messages`` (string content or text, image,
  tool_use, tool_result blocks), ``system`` (a string or text blocks), ``stop_sequences``,
  ``temperature``, ``top_p``, ``top_k``, ``tools`` (name, description, input_schema),
  ``tool_choice`` (auto / any / tool / none), ``thinking`` (enabled / disabled), ``stream``.
- Answer: ``thinking`` block (when the model reasoned), ``text`` block, ``tool_use`` blocks;
  ``stop_reason`` end_turn / max_tokens / stop_sequence / tool_use.
- Stream: message_start, content_block_start / _delta / _stop per block, message_delta,
  message_stop (``event: <type>`` / ``data: <json>``).
- Errors: ``{"type": "error", "error": {"type": ..., "message": ...}}`` with the HTTP status.

Approximations: image blocks are dropped from the prompt; ``thinking`` maps to the chat template's
``enable_thinking`` (absent: the chat default, so a Qwen3 model thinks); thinking blocks carry
an empty ``signature``; ``top_k`` is accepted and has no effect (as every sampling knob here).
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from .chatbridge import ChatAnswer, Translator, run_chat, sse_event, stream_chat
from .params import ApiError, is_true

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def _blocks_text(blocks) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        return ""
    return "\n".join(b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text" and "text" in b)


def chat_messages(body: dict) -> list[dict]:
    messages: list[dict] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _blocks_text(system)})
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise ApiError(400, "messages: Field required" if raw is None else "messages: Input should be a valid list")
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(400, "messages: each message needs a role of 'user' or 'assistant'")
        content = m.get("content")
        if isinstance(content, str):
            messages.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, "messages: content must be a string or a list of content blocks")
        texts, calls = [], []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(block.get("text", ""))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
            elif kind == "tool_result":
                result = block.get("content")
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _blocks_text(result)}
                )
            elif kind in ("image", "thinking", "redacted_thinking"):
                continue
            else:
                raise ApiError(400, f"messages: unsupported content block type {kind!r}")
        if texts or calls or m["role"] == "assistant":
            message: dict[str, Any] = {"role": m["role"], "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
    return messages


def chat_request(body: dict) -> dict:
    """The chat request this Messages request runs as."""
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise ApiError(400, "max_tokens: Field required")
    chat: dict[str, Any] = {"messages": chat_messages(body), "max_tokens": max_tokens}
    if body.get("model"):
        chat["model"] = body["model"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    tools = body.get("tools")
    if tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {},
                },
            }
            for t in tools
            if isinstance(t, dict)
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "any":
            chat["tool_choice"] = "required"
        elif kind == "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "none"):
            chat["tool_choice"] = kind
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        chat["chat_template_kwargs"] = {"enable_thinking": thinking["type"] == "enabled"}
    return chat


def stop_reason(finish_reason: str | None, matched: str | int | None, called: bool) -> tuple[str, str | None]:
    """Anthropic's stop reason; a named tool call (chat finish_reason "stop") is ``tool_use`` too."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "tool_calls" or called:
        return "tool_use", None
    if isinstance(matched, str):
        return "stop_sequence", matched
    return "end_turn", None


def _tool_input(arguments: str) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}


def content_of(answer: ChatAnswer) -> list[dict]:
    blocks: list[dict] = []
    if answer.reasoning:
        blocks.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.content:
        blocks.append({"type": "text", "text": answer.content})
    for call in answer.tool_calls:
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _tool_input(function["arguments"]),
            }
        )
    return blocks


class MessageEvents(Translator):
    """The Messages API's stream events, from the chat stream."""

    def __init__(self, mid: str, model: str) -> None:
        super().__init__()
        self.mid, self.model = mid, model
        self.index = -1
        self.kind: str | None = None  # the open block's type
        self.called = False  # a tool_use block was sent

    def start(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
        }
        return [sse_event("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _open(self, block: dict) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.kind = block["type"]
        out.append(
            sse_event(
                "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
            )
        )
        return out

    def _delta(self, delta: dict) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def reasoning(self, delta: str) -> list[bytes]:
        out = [] if self.kind == "thinking" else self._open({"type": "thinking", "thinking": "", "signature": ""})
        return [*out, self._delta({"type": "thinking_delta", "thinking": delta})]

    def content(self, delta: str) -> list[bytes]:
        out = [] if self.kind == "text" else self._open({"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": delta})]

    def tool_call(self, call: dict) -> list[bytes]:
        function = call.get("function") or {}
        out: list[bytes] = []
        self.called = True
        if call.get("id") or self.kind != "tool_use":
            out += self._open(
                {"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "", "input": {}}
            )
        if function.get("arguments"):
            out.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def finish(self, completion_tokens: int) -> list[bytes]:
        out = self._close()
        reason, sequence = stop_reason(self.finish_reason, self.stop_reason, self.called)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(
            sse_event(
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": completion_tokens}},
            )
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    def error(self, error: dict) -> list[bytes]:
        return [sse_event("error", error_body(int(error.get("code") or 500), error.get("message", "")))]


async def handle(gen, scope: dict, receive, send, body: dict, fault=None) -> None:
    """Answer a Messages request (``gen``: the server's ``Generation``)."""
    gen.check_model(body)
    chat = chat_request(body)
    mid = "msg_" + os.urandom(12).hex()
    model = body.get("model") or gen.model_name
    if is_true(body.get("stream")):
        await stream_chat(gen, scope, receive, send, chat, fault, MessageEvents(mid, model))
        return
    answer = await run_chat(gen, scope, receive, chat)
    if answer is None:
        return
    reason, sequence = stop_reason(answer.finish_reason, answer.stop_reason, bool(answer.tool_calls))
    response = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content_of(answer),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens},
    }
    await gen.server.send_json(send, 200, orjson.dumps(response), answer.rid, fault)
