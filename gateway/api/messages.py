"""Anthropic's Messages API (``POST /v1/messages``), served through the chat completions path.

Coding tools and the ``anthropic`` SDK speak this API. A Messages request is translated into a
chat completions request and goes the way every chat request goes (policy, routing, the
reasoning switch of the model's family, caps, budgets, failover, energy); the answer is
translated back, unary or as Anthropic's stream events (``message_start`` ... ``message_stop``).
The key may come as ``x-api-key`` (Anthropic's header) or ``authorization: Bearer``;
``anthropic-version`` is accepted and not needed. Errors are in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``). The request's energy is an extra field
of ``usage`` (``usage.energy``), as on the chat path.

Translated: system prompts, text and image blocks, tool definitions (``input_schema``),
``tool_choice`` (auto, any, tool, none; ``disable_parallel_tool_use``), ``tool_use`` and
``tool_result`` blocks, ``thinking`` (enabled: reasoning is asked for, its budget picks the
effort; the thinking comes back as ``thinking`` blocks without a signature), ``stop_sequences``,
``temperature``, ``top_p``, ``top_k``, ``metadata.user_id``. Refused with a 400 naming the field:
server tools (web search, code execution, ...), documents and other block types the chat path
cannot carry.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from gateway.api.dialect import ChatStreamReader, listed
from gateway.context import RequestContext, request_id
from gateway.errors import GatewayError
from gateway.proxy.forward import StreamEnd

# HTTP status -> Anthropic's error type
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error"}  # fmt: skip
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param)


def _text(content: Any, param: str) -> str:
    """A block list (or string) of text, as one string (system prompts, tool results)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise _bad("Only text blocks are supported here.", f"{param}[{i}]")
            texts.append(block["text"])
        return "\n".join(texts)
    if content is None:
        return ""
    raise _bad("Expected a string or a list of text blocks.", param)


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad("An image block needs a base64 or url source.", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _turn(message: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (a user turn's tool results become tool messages)."""
    param = f"messages[{i}]"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise _bad("Each message needs a role of 'user' or 'assistant'.", f"{param}.role")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad("A message's content must be a string or a list of content blocks.", f"{param}.content")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image(block, where))
        elif kind == "tool_use" and role == "assistant":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result" and role == "user":
            text = _text(block.get("content"), f"{where}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier thinking handed back: chat templates drop it too
        else:
            raise _bad(f"Content blocks of type {kind!r} are not supported here.", f"{where}.type")
    out: list[dict[str, Any]] = results  # tool results answer the assistant turn just before
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(listed(body, "tools")):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or "input_schema" not in tool:
            raise _bad("Only client tools (name, description, input_schema) are available through this gateway; "
                       "server tools are not.", f"tools[{i}]")  # fmt: skip
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request that does what a Messages request asks, or a 400."""
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise _bad("max_tokens: a positive integer is required.", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list is required.", "messages")
    chat: dict[str, Any] = {k: body[k] for k in ("model", "temperature", "top_p", "top_k") if k in body}
    chat["max_tokens"] = limit
    turns: list[dict[str, Any]] = []
    if body.get("system") is not None:
        turns.append({"role": "system", "content": _text(body["system"], "system")})
    for i, message in enumerate(messages):
        turns.extend(_turn(message, i))
    chat["messages"] = turns
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens") or 0
        chat["reasoning_effort"] = "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"
    elif isinstance(thinking, dict) and thinking.get("type") == "disabled":
        chat["reasoning_effort"] = "none"
    tools = _tools(body)
    if tools:
        chat["tools"] = tools
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
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if body.get("service_tier") == "standard_only":  # Anthropic's opt-out of any other tier
        chat["service_tier"] = "default"
    return chat


def _usage(chat_usage: Any) -> dict[str, Any]:
    usage = chat_usage if isinstance(chat_usage, dict) else {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": usage.get("prompt_tokens") or 0,
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }
    if "energy" in usage:
        out["energy"] = usage["energy"]
    return out


def _arguments(text: str) -> Any:
    try:
        value = orjson.loads(text) if text else {}
    except ValueError:
        return {"arguments": text}  # not JSON: handed over as it came
    return value if isinstance(value, dict) else {"value": value}


class MessagesAnswer(ChatStreamReader):
    """One request's answer in Anthropic's shape, from the chat answer or stream."""

    api: ClassVar[str] = "messages"

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__()
        self.body = body
        self.id = f"msg_{request_id()}"
        self.model = body.get("model") or ""
        self.blocks: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the block being streamed
        self.tool_blocks: dict[int, dict[str, Any]] = {}

    @staticmethod
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    @staticmethod
    def error_body(err: GatewayError) -> bytes:
        kind = _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": err.message}})

    def _stop(self, finish: str | None, stop_reason: Any) -> tuple[str, str | None]:
        if finish == "stop" and isinstance(stop_reason, str):
            return "stop_sequence", stop_reason  # vLLM names the stop string that ended it
        return _STOP.get(finish or "stop", "end_turn"), None

    def unary(self, payload: dict[str, Any], usage: Any, nudges: list[dict[str, Any]] | None) -> dict[str, Any]:
        self.model = payload.get("model") or self.model
        choices = payload.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                            "input": _arguments(function.get("arguments") or "")})  # fmt: skip
        stop, sequence = self._stop(choice.get("finish_reason"), choice.get("stop_reason"))
        out = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
               "stop_reason": stop, "stop_sequence": sequence, "usage": _usage(usage)}  # fmt: skip
        if nudges:
            out["nudges"] = nudges
        return out

    # ------------------------------------------------------------------ the stream

    @staticmethod
    def _event(kind: str, payload: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"

    def start(self, ctx: RequestContext) -> bytes:
        self.model = ctx.model or self.model
        usage = {"input_tokens": ctx.prompt_tokens_est, "output_tokens": 0}  # the exact counts come at the end
        message: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage,
        }  # fmt: skip
        return self._event("message_start", {"message": message}) + self._event("ping", {})

    def _open_block(self, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self.blocks.append(block)
        self.open = block
        return [*out, self._event("content_block_start", {"index": len(self.blocks) - 1, "content_block": block})]

    def _close_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._event("content_block_stop", {"index": len(self.blocks) - 1})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", {"index": len(self.blocks) - 1, "delta": delta})

    def on_reasoning(self, text: str) -> list[bytes]:
        out = [] if self.open is not None and self.open["type"] == "thinking" else \
            self._open_block({"type": "thinking", "thinking": "", "signature": ""})  # fmt: skip
        return [*out, self._delta({"type": "thinking_delta", "thinking": text})]

    def on_text(self, text: str) -> list[bytes]:
        out = [] if self.open is not None and self.open["type"] == "text" else \
            self._open_block({"type": "text", "text": ""})  # fmt: skip
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def on_tool_call(self, index: int, call_id: Any, name: Any, arguments: str) -> list[bytes]:
        out: list[bytes] = []
        if index not in self.tool_blocks:
            block = self.tool_blocks[index] = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
            out += self._open_block(block)
        if arguments:
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def error(self, error: dict[str, Any]) -> list[bytes]:
        kind = "overloaded_error" if error.get("code") == 503 else "api_error"
        return [self._event("error", {"error": {"type": kind, "message": error.get("message", "")}})]

    def end(self, ctx: RequestContext, end: StreamEnd, nudges: list[dict[str, Any]] | None) -> bytes:
        out = [self.feed(end.before)]
        if end.held is not None:
            out.append(self.feed(end.held))
        out += self._close_block()
        stop, sequence = self._stop(self.finish, self.stop_reason)
        delta: dict[str, Any] = {"delta": {"stop_reason": stop, "stop_sequence": sequence}, "usage": _usage(ctx.usage)}
        if nudges:
            delta["nudges"] = nudges
        out.append(self._event("message_delta", delta))
        out.append(self._event("message_stop", {}))
        return b"".join(out)
