"""Server-sent events as vLLM writes them: chat chunks, completion chunks, the usage chunk.

Chat chunks are pydantic dumps with ``exclude_unset`` (fields never set are absent), completion
chunks dumps with every field (``"usage": null`` included), the usage chunk has ``choices: []``
and drops nulls. Each event is exactly ``data: <json>\n\n``; the constant parts of a request's
chunks are encoded once, so a token costs one small ``orjson.dumps``. One formatter per choice
(``index``); with ``n`` > 1 the stream interleaves them, one choice per chunk.
"""

from __future__ import annotations

import time

import orjson

from .logprobs import Logprobs
from .text import OutputPlan
from .tools import ToolStream

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
DONE = b"data: [DONE]\n\n"


def _usage_json(prompt: int, completion: int, details: dict | None = None) -> bytes:
    usage = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d' % (prompt, prompt + completion, completion)
    if details is not None:
        usage += b',"prompt_tokens_details":' + orjson.dumps(details)
    return usage + b"}"


class ChatChunks:
    """``chat.completion.chunk`` events of one choice (``exclude_unset``: fields never set are absent).

    ``tools`` (a ``structured.ToolStream``) turns the content into tool-call deltas as vLLM's
    parsers do; ``logprobs`` adds each event's token logprobs; ``finish_reason`` overrides the
    plan's (``tool_calls``); ``echo`` is sent as content after the role chunk; ``token_ids``
    adds each event's token ids and ``prompt_ids`` the prompt's to the role chunk.
    """

    def __init__(
        self,
        rid: str,
        model_json: bytes,
        plan: OutputPlan,
        reasoning_fields: tuple[str, ...],
        hide_reasoning: bool,
        *,
        index: int = 0,
        created: int | None = None,
        finish_reason: str | None = None,
        tools: ToolStream | None = None,
        logprobs: Logprobs | None = None,
        echo: str | None = None,
        token_ids: bool = False,
        prompt_ids: list[int] | None = None,
    ) -> None:
        self.echo, self.token_ids, self.prompt_ids = echo, token_ids, prompt_ids
        self.prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
            orjson.dumps(rid),
            int(time.time()) if created is None else created,
            model_json,
        )
        self.plan = plan
        self.index = b'{"index":%d,' % index
        self.reasoning_fields = () if hide_reasoning else reasoning_fields
        self.tools = tools
        self.logprobs = logprobs
        self.finish = b',"finish_reason":"%s","stop_reason":%s}]' % (
            (finish_reason or plan.finish_reason).encode(),
            orjson.dumps(plan.stop_reason),
        )

    def _delta(self, i: int, j: int, final: bool) -> bytes | None:
        reasoning, content = self.plan.texts(i, j)
        calls: list[dict] = []
        if self.tools is not None:
            start = self.plan.content_start
            content, calls = self.tools.delta(self.plan.texts(start, j)[1] if j > start else "")
        delta: dict = {}
        if content or (final and not reasoning and self.tools is None):
            delta["content"] = content
        if reasoning:
            for field in self.reasoning_fields:
                delta[field] = reasoning
        if calls:
            delta["tool_calls"] = calls
        if not delta and not final:
            return None  # only special tokens (<think>, </think>) or parser state: vLLM sends nothing
        return orjson.dumps(delta)

    def first_chunk(self, prompt_len: int) -> bytes:
        """The role chunk vLLM sends for each choice before any token (then the echoed text)."""
        usage = b',"usage":' + _usage_json(prompt_len, 0) if prompt_len >= 0 else b""
        ids = b',"prompt_token_ids":' + orjson.dumps(self.prompt_ids) if self.prompt_ids is not None else b""
        chunk = (
            self.prefix
            + self.index
            + b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
            + usage
            + ids
            + b"}\n\n"
        )
        if self.echo:
            delta = orjson.dumps({"content": self.echo})
            chunk += self.prefix + self.index + b'"delta":' + delta + b',"logprobs":null,"finish_reason":null}]'
            chunk += usage + b"}\n\n"
        return chunk

    def events(self, start: int, end: int, finished: bool, coalesce: bool, prompt_len: int):
        prefix = self.prefix
        ranges = [(start, end)] if coalesce or start == end else [(i, i + 1) for i in range(start, end)]
        last = len(ranges) - 1
        for k, (i, j) in enumerate(ranges):
            final = finished and k == last
            delta = self._delta(i, j, final)
            if delta is None:
                continue
            lp = b"null" if self.logprobs is None else orjson.dumps(self.logprobs.chat(i, j))
            state = self.finish if final else b',"finish_reason":null}]'
            if self.token_ids:
                state = b',"token_ids":' + orjson.dumps(self.plan.token_ids(i, j)) + state
            usage = b',"usage":' + _usage_json(prompt_len, j) if prompt_len >= 0 else b""
            yield prefix + self.index + b'"delta":' + delta + b',"logprobs":' + lp + state + usage + b"}\n\n"

    def usage_chunk(self, prompt_len: int, completion: int, details: dict | None = None) -> bytes:
        return self.prefix + b'],"usage":' + _usage_json(prompt_len, completion, details) + b"}\n\n"


class CompletionChunks:
    """``text_completion`` stream events of one choice (vLLM dumps these with every field, nulls included)."""

    def __init__(
        self,
        rid: str,
        model_json: bytes,
        plan: OutputPlan,
        version,
        *,
        index: int = 0,
        created: int | None = None,
        logprobs: Logprobs | None = None,
        echo: tuple[str, dict | None] | None = None,
        prompt_ids: list[int] | None = None,
    ) -> None:
        self.echo = echo  # (prompt text, its logprobs): prepended to the first event
        self.prompt_ids = prompt_ids  # return_token_ids: on the first event, and token_ids on each
        self.prefix = b'data: {"id":%s,"object":"text_completion","created":%d,"model":%s,"choices":[' % (
            orjson.dumps(rid),
            int(time.time()) if created is None else created,
            model_json,
        )
        self.plan = plan
        self.index = b'{"index":%d,"text":' % index
        self.logprobs = logprobs
        self.text_len = len(echo[0]) if echo else 0  # characters sent so far: the next text_offset
        self.has_token_fields = version.has_token_ids_fields
        self.finish = b'"finish_reason":"%s","stop_reason":%s' % (
            plan.finish_reason.encode(),
            orjson.dumps(plan.stop_reason),
        )

    def first_chunk(self, prompt_len: int) -> None:
        return None  # completions have no role chunk

    def events(self, start: int, end: int, finished: bool, coalesce: bool, prompt_len: int):
        ranges = [(start, end)] if coalesce or start == end else [(i, i + 1) for i in range(start, end)]
        last = len(ranges) - 1
        for k, (i, j) in enumerate(ranges):
            final = finished and k == last
            state = self.finish if final else b'"finish_reason":null,"stop_reason":null'
            usage = _usage_json(prompt_len, j) if prompt_len >= 0 else b"null"
            text = self.plan.texts(i, j)[1]
            head = self.echo if i == 0 else None
            if self.logprobs is None:
                lp = b"null"
            else:
                lp_json = self.logprobs.completion(i, j, self.text_len)
                self.text_len += len(text)
                if head is not None and head[1] is not None:
                    lp_json = {name: head[1][name] + lp_json[name] for name in lp_json}
                lp = orjson.dumps(lp_json)
            if head is not None:
                text = head[0] + text
            if not self.has_token_fields:
                token_fields = b""
            elif self.prompt_ids is None:
                token_fields = b',"prompt_token_ids":null,"token_ids":null'
            else:
                prompt_ids = orjson.dumps(self.prompt_ids) if i == 0 else b"null"
                ids = orjson.dumps(self.plan.token_ids(i, j))
                token_fields = b',"prompt_token_ids":' + prompt_ids + b',"token_ids":' + ids
            yield (
                self.prefix
                + self.index
                + orjson.dumps(text)
                + b',"logprobs":'
                + lp
                + b","
                + state
                + token_fields
                + b'}],"usage":'
                + usage
                + b"}\n\n"
            )

    def usage_chunk(self, prompt_len: int, completion: int, details: dict | None = None) -> bytes:
        return self.prefix + b'],"usage":' + _usage_json(prompt_len, completion, details) + b"}\n\n"
