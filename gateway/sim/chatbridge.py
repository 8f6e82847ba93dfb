"""Running another API's request as a chat request: what ``responses.py`` and ``messages.py`` share.

vLLM serves ``/v1/responses`` and ``/v1/messages`` by turning the request into a chat request,
running it, and turning the answer back. Here the chat handler (``Generation.chat``) runs with a
``send`` that keeps (non-streaming) or translates (streaming) what it writes, so the engine,
batching, energy ground truth and metrics are exactly those of the equivalent chat request.

The streamed chat request asks for continuous usage (the role chunk then carries the prompt's
token count) and a final usage chunk, which ends the translated stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from . import text


@dataclass
class ChatAnswer:
    """The parts of a non-streamed chat completion the other APIs are built from."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict]
    finish_reason: str
    stop_reason: str | int | None
    prompt_tokens: int
    completion_tokens: int
    rid: str

    @property
    def reasoning_tokens(self) -> int:
        """Approximation: the reasoning text's token count (``</think>`` and the like not included)."""
        return text.count_tokens(self.reasoning) if self.reasoning else 0


def _reasoning(delta: dict) -> str | None:
    return delta.get("reasoning") or delta.get("reasoning_content")


async def run_chat(gen, scope: dict, receive, chat_body: dict) -> ChatAnswer | None:
    """Run a non-streamed chat request; None when the client went away (the request was aborted)."""
    parts: list[bytes] = []

    async def keep(message: dict) -> None:
        if message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await gen.chat(scope, receive, keep, chat_body, None)
    if not parts:
        return None
    body = orjson.loads(b"".join(parts))
    choice = body["choices"][0]
    message = choice["message"]
    usage = body["usage"]
    return ChatAnswer(
        content=message.get("content"),
        reasoning=_reasoning(message),
        tool_calls=message.get("tool_calls") or [],
        finish_reason=choice["finish_reason"],
        stop_reason=choice.get("stop_reason"),
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        rid=body["id"].removeprefix("chatcmpl-"),
    )


@dataclass
class Translator:
    """Turns the chat handler's SSE stream into another API's events (subclasses say how)."""

    buffer: bytes = b""
    started: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        *events, self.buffer = self.buffer.split(b"\n\n")
        out: list[bytes] = []
        for raw in events:
            if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                continue
            chunk = orjson.loads(raw[len(b"data: ") :])
            if "error" in chunk:
                out += self.error(chunk["error"])
                continue
            choices = chunk.get("choices") or []
            usage = chunk.get("usage")
            if not self.started:
                self.started = True
                self.prompt_tokens = usage["prompt_tokens"] if usage else 0
                out += self.start()
            for choice in choices:
                delta = choice.get("delta") or {}
                reasoning = _reasoning(delta)
                if reasoning:
                    out += self.reasoning(reasoning)
                if delta.get("content"):
                    out += self.content(delta["content"])
                for call in delta.get("tool_calls") or []:
                    out += self.tool_call(call)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                    self.stop_reason = choice.get("stop_reason")
            if not choices and usage is not None:
                out += self.finish(usage["completion_tokens"])
        return b"".join(out)

    # --- what subclasses write ----------------------------------------------------------------
    def start(self) -> list[bytes]:
        raise NotImplementedError

    def reasoning(self, delta: str) -> list[bytes]:
        raise NotImplementedError

    def content(self, delta: str) -> list[bytes]:
        raise NotImplementedError

    def tool_call(self, call: dict) -> list[bytes]:
        raise NotImplementedError

    def finish(self, completion_tokens: int) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: dict) -> list[bytes]:
        raise NotImplementedError


async def stream_chat(gen, scope: dict, receive, send, chat_body: dict, fault, translator: Translator) -> None:
    """Run a streamed chat request, sending its events as ``translator`` rewrites them. Faults
    count the chat stream's events (``after_chunks``), not the translated ones."""
    body = {**chat_body, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}

    async def relay(message: dict) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        more = message.get("more_body", False)
        out = translator.feed(message.get("body", b""))
        if out or not more:
            await send({"type": "http.response.body", "body": out, "more_body": more})

    await gen.chat(scope, receive, relay, body, fault)


def sse_event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
