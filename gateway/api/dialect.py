"""What an API served through the chat path provides: the Responses API and Anthropic's Messages.

The request path (``api/openai.py``) runs every generation request as a chat completions request
upstream. An API with another request and answer shape brings a ``Dialect``: it translates the
client's body for the chat endpoint, and the chat answer (unary or streamed) and errors back.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from gateway.context import RequestContext
from gateway.errors import GatewayError
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
