"""What an API served through the chat path provides: the Responses API and Anthropic's Messages.

The request path (``api/openai.py``) runs every generation request as a chat completions request
upstream. An API with another request and answer shape brings a ``Dialect``: it translates the
client's body for the chat endpoint, and the chat answer (unary or streamed) and errors back.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.proxy import sse
from gateway.proxy.forward import StreamEnd


class Dialect(Protocol):
    api: ClassVar[str]  # the API's name in metrics and the ledger ("responses", "messages")

    def __init__(self, body: dict[str, Any]) -> None: ...  # the client's body, as it came

    @staticmethod
    def upstream(body: dict[str, Any]) -> dict[str, Any]: ...  # the chat request, or GatewayError 400

    @staticmethod
    def error_body(err: GatewayError) -> bytes: ...  # an error in this API's shape

    def unary(self, payload: dict[str, Any], usage: Any, nudges: list[dict[str, Any]] | None) -> dict[str, Any]: ...

    def start(self, ctx: RequestContext) -> bytes: ...  # a stream's first events

    def feed(self, data: bytes) -> bytes: ...  # relayed chat stream bytes, translated

    def end(self, ctx: RequestContext, end: StreamEnd, nudges: list[dict[str, Any]] | None) -> bytes: ...


class ChatStreamReader:
    """What a dialect's ``feed`` shares: the relayed chat stream split into events and decoded,
    the first choice's deltas handed to ``on_reasoning``, ``on_text`` and ``on_tool_call``, its
    finish reason kept, and each error event handed to ``error`` (the usage chunk and ``[DONE]``
    come through ``StreamEnd``, not here). Only the first choice is translated: neither API has
    ``n``."""

    def __init__(self) -> None:
        self.splitter = sse.EventSplitter()
        self.model = ""
        self.finish: str | None = None  # the first choice's finish_reason
        self.stop_reason: Any = None  # vLLM's stop_reason beside it (the stop string that ended it)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self.splitter.feed(data):
            if sse.is_done(event) or sse.is_comment(event) or sse.is_usage(event):
                continue
            try:
                chunk = sse.decode(event)
            except ValueError:
                continue
            error = chunk.get("error")
            out += self.error(error) if isinstance(error, dict) else self.chunk(chunk)
        return b"".join(out)

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        self.model = chunk.get("model") or self.model
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                out += self.on_reasoning(reasoning)
            if delta.get("content"):
                out += self.on_text(delta["content"])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                out += self.on_tool_call(call.get("index", 0), call.get("id"), function.get("name"),
                                         function.get("arguments") or "")  # fmt: skip
            if choice.get("finish_reason"):
                self.finish, self.stop_reason = choice["finish_reason"], choice.get("stop_reason")
        return out

    def on_reasoning(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def on_text(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def on_tool_call(self, index: int, call_id: Any, name: Any, arguments: str) -> list[bytes]:
        """A piece of the tool call at ``index`` (its id and name come with its first piece)."""
        raise NotImplementedError

    def error(self, error: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError


def listed(body: dict[str, Any], name: str) -> list[Any]:
    """``body[name]`` when it is a list, [] when absent; a 400 naming it otherwise."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise GatewayError(400, f"'{name}' must be a list.", param=name)
    return value
