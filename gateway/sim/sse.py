"""Server-sent events as vLLM writes them: chat chunks, completion chunks, the usage chunk.

Chat chunks are pydantic dumps with ``exclude_unset`` (fields never set are absent), completion
chunks dumps with every field (``"usage": null`` included), the usage chunk has ``choices: []``
and drops nulls. Each event is exactly ``data: <json>\n\n``; the constant parts of a request's
chunks are encoded once, so a token costs one small ``orjson.dumps``.
"""

from __future__ import annotations

import time

import orjson

from .text import OutputPlan

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
DONE = b"data: [DONE]\n\n"


def _usage_json(prompt: int, completion: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (prompt, prompt + completion, completion)


class ChatChunks:
    """``chat.completion.chunk`` events (``exclude_unset``: fields never set are absent)."""

    def __init__(
        self,
        rid: str,
        model_json: bytes,
        plan: OutputPlan,
        reasoning_fields: tuple[str, ...],
        hide_reasoning: bool,
    ) -> None:
        self.prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
            orjson.dumps(rid),
            int(time.time()),
            model_json,
        )
        self.plan = plan
        self.reasoning_fields = () if hide_reasoning else reasoning_fields
        self.finish = b',"logprobs":null,"finish_reason":"%s","stop_reason":%s}]' % (
            plan.finish_reason.encode(),
            orjson.dumps(plan.stop_reason),
        )

    def _delta(self, reasoning: str, content: str, final: bool) -> bytes | None:
        delta = {}
        if content or (final and not reasoning):
            delta["content"] = content
        if reasoning:
            for field in self.reasoning_fields:
                delta[field] = reasoning
        if not delta and not final:
            return None  # only special tokens (<think>, </think>): vLLM sends nothing
        return orjson.dumps(delta)

    def events(self, start: int, end: int, finished: bool, coalesce: bool, prompt_len: int):
        prefix = self.prefix
        if start == 0:
            usage = b',"usage":' + _usage_json(prompt_len, 0) if prompt_len >= 0 else b""
            yield (
                prefix
                + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
                + usage
                + b"}\n\n"
            )
        ranges = [(start, end)] if coalesce or start == end else [(i, i + 1) for i in range(start, end)]
        last = len(ranges) - 1
        for k, (i, j) in enumerate(ranges):
            final = finished and k == last
            delta = self._delta(*self.plan.texts(i, j), final)
            if delta is None:
                continue
            tail = self.finish if final else b',"logprobs":null,"finish_reason":null}]'
            usage = b',"usage":' + _usage_json(prompt_len, j) if prompt_len >= 0 else b""
            yield prefix + b'{"index":0,"delta":' + delta + tail + usage + b"}\n\n"

    def usage_chunk(self, prompt_len: int, completion: int) -> bytes:
        return self.prefix + b'],"usage":' + _usage_json(prompt_len, completion) + b"}\n\n"


class CompletionChunks:
    """``text_completion`` stream events (vLLM dumps these with every field, nulls included)."""

    def __init__(self, rid: str, model_json: bytes, plan: OutputPlan, version) -> None:
        self.prefix = b'data: {"id":%s,"object":"text_completion","created":%d,"model":%s,"choices":[' % (
            orjson.dumps(rid),
            int(time.time()),
            model_json,
        )
        self.plan = plan
        self.token_fields = b',"prompt_token_ids":null,"token_ids":null' if version.has_token_ids_fields else b""
        self.finish = b'"finish_reason":"%s","stop_reason":%s' % (
            plan.finish_reason.encode(),
            orjson.dumps(plan.stop_reason),
        )

    def events(self, start: int, end: int, finished: bool, coalesce: bool, prompt_len: int):
        ranges = [(start, end)] if coalesce or start == end else [(i, i + 1) for i in range(start, end)]
        last = len(ranges) - 1
        for k, (i, j) in enumerate(ranges):
            final = finished and k == last
            state = self.finish if final else b'"finish_reason":null,"stop_reason":null'
            usage = _usage_json(prompt_len, j) if prompt_len >= 0 else b"null"
            piece = orjson.dumps(self.plan.texts(i, j)[1])
            yield (
                self.prefix
                + b'{"index":0,"text":'
                + piece
                + b',"logprobs":null,'
                + state
                + self.token_fields
                + b'}],"usage":'
                + usage
                + b"}\n\n"
            )

    def usage_chunk(self, prompt_len: int, completion: int) -> bytes:
        return self.prefix + b'],"usage":' + _usage_json(prompt_len, completion) + b"}\n\n"
