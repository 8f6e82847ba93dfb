"""Read a request, send a response; paths and CORS are Starlette's.

Handlers take this module's small ``Request`` (body limits and deadlines, OpenAI-shaped
errors, no per-request parsing it does not need) rather than FastAPI's, whose per-request
machinery costs the full request path far more than Starlette's router does. Dispatch by
path, path parameters, trailing-slash redirects and CORS come from Starlette's router and
middleware (``bench/starlette_check.py`` measures all three ways; README "Library choices").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.routing import Router as StarletteRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayError

Handler = Callable[["Request"], Awaitable[None]]

JSON = b"application/json"


class ClientLeft(Exception):
    """The client went away before its request was complete: nobody to answer."""


# The scope key under which a request the gateway makes of itself (a Batch API line, api/batchrun.py)
# carries its caller's identity. Only the gateway builds such scopes: a client cannot set it.
BATCH_IDENTITY = "gateway.identity"


class Request:
    __slots__ = ("scope", "receive", "send", "_headers", "started", "body_read")

    def __init__(self, scope: Scope, receive: Receive, send: Send):
        self.scope = scope
        self.receive = receive
        self.send = send
        self._headers: dict[str, str] | None = None
        self.started = False  # http.response.start sent
        self.body_read = False  # the whole body was received (else an error closes the connection)

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def headers(self) -> dict[str, str]:
        """Request headers with lower-case names (the last value wins for repeats)."""
        if self._headers is None:
            self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope["headers"]}
        return self._headers

    @property
    def path_params(self) -> dict[str, Any]:
        """The ``{parameters}`` of the matched path (Starlette's router puts them in the scope)."""
        return self.scope.get("path_params", {})

    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

    async def body(self, limit: int, timeout_s: float | None = None, budget: BodyBudget | None = None) -> bytes:
        """The whole body: 413 as soon as it grows past ``limit`` bytes, 408 when it has not
        arrived within ``timeout_s``, 503 when ``budget`` (the bytes all requests may hold while
        their bodies arrive) has no room for it."""
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(
                413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large"
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientLeft("client disconnected while sending the body")
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise GatewayError(
                                413,
                                f"Request body is larger than the limit of {limit} bytes.",
                                code="request_too_large",
                            )
                        if budget is not None:
                            budget.take(len(chunk))  # GatewayError(503) when full
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        self.body_read = True
                        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            raise GatewayError(
                408, f"The request body did not arrive within {timeout_s:g} s.", code="request_timeout"
            ) from None
        finally:
            if budget is not None:
                budget.give(sum(len(c) for c in chunks))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def respond(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: dict[str, str] | None = None
    ) -> None:
        raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if headers:
            raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        await self.start(status, raw)
        await self.send({"type": "http.response.body", "body": body})

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        await self.respond(status, orjson.dumps(payload), JSON, headers)

    async def error(self, err: GatewayError, headers: dict[str, str] | None = None, body: bytes | None = None) -> None:
        """``err`` in OpenAI's error shape (or as ``body``, another API's shape)."""
        merged = {**(headers or {}), **err.headers}
        if not self.body_read and self.method in ("POST", "PUT", "PATCH"):
            merged["connection"] = "close"  # the rest of the body is never read: do not wait for it
        await self.respond(err.status, err.encode() if body is None else body, JSON, merged)

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (after the body has been read)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


class BodyBudget:
    """The bytes of request bodies all requests together may hold while they arrive.

    A body is held in memory until it is complete; without a bound, many slow or large uploads
    at once can take all the memory there is. A chunk that does not fit is a 503 (with
    ``retry-after``) for its request; the bytes come back when the body is complete or refused.
    """

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise GatewayError(
                503, "The gateway is receiving too many request bodies at once; retry shortly.",
                code="server_busy", type="server_error", headers={"retry-after": "1"},
            )  # fmt: skip
        self.held += n

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class Endpoint:
    """One path's handlers by method, as the ASGI app Starlette's router hands the request to.

    An unsupported method is a 405 in OpenAI's error shape with ``allow``; a GET handler also
    answers HEAD.
    """

    __slots__ = ("handlers", "allow")

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = dict(handlers)
        if "GET" in self.handlers:
            self.handlers.setdefault("HEAD", self.handlers["GET"])
        self.allow = ", ".join(sorted(self.handlers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        handler = self.handlers.get(scope["method"])
        if handler is None:
            err = GatewayError(
                405, f"Method {scope['method']} is not allowed on {scope['path']}", code="method_not_allowed"
            )
            await request.error(err, {"allow": self.allow})
            return
        await handler(request)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await Request(scope, receive, send).error(GatewayError(404, f"Unknown path {scope['path']}", code="unknown_url"))


# What a browser script may read of an answer (CORS): the request id, retry advice and the
# gateway's own headers (routing, energy, nudges, policy).
EXPOSED_HEADERS = [
    "x-request-id", "retry-after", "x-should-retry", "x-gateway-routed-model", "x-gateway-route-reason",
    "x-gateway-adequacy", "x-gateway-energy-j", "x-gateway-energy-source", "x-gateway-nudge", "x-gateway-policy",
    "x-gateway-reasoning", "x-gateway-caps", "x-gateway-cloud-usd", "x-gateway-override",
]  # fmt: skip


def application(paths: dict[str, dict[str, Handler]], cors_origins: list[str]) -> ASGIApp:
    """The HTTP application: Starlette's router over ``paths`` (path -> method -> handler; paths
    may have ``{parameters}``), unknown paths 404 in OpenAI's shape, and a trailing slash
    redirected (307) as vLLM's FastAPI server does. With ``cors_origins``, Starlette's CORS
    middleware answers preflights and adds the CORS headers, as ``vllm serve --allowed-origins``
    does (no credentials: the gateway is called with a key in a header, never with cookies)."""
    routes = [Route(path, endpoint=Endpoint(handlers), methods=None) for path, handlers in paths.items()]
    app: ASGIApp = StarletteRouter(routes, default=not_found)
    if cors_origins:
        cors = CORSMiddleware(
            app, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"], expose_headers=EXPOSED_HEADERS
        )
        app = BrowsersOnly(cors, app)
    return app


class BrowsersOnly:
    """Requests with an ``Origin`` header (browsers) go through ``cors``, the rest straight to ``app``.

    Starlette's CORS middleware wraps ``send`` for every request and rewrites every response head
    to add ``vary: origin``; on the request path of API clients, which send no ``Origin``, that
    cost ~5% of the gateway's throughput (bench/starlette_check.py). Without an ``Origin`` there is
    nothing for CORS to do; and shared caches do not store what ``vary`` would protect (answers to
    POSTs, or to requests with an ``authorization`` header: RFC 9111 sections 3 and 3.5).
    """

    __slots__ = ("cors", "app")

    def __init__(self, cors: ASGIApp, app: ASGIApp) -> None:
        self.cors, self.app = cors, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, _ in scope.get("headers", ()):
            if name == b"origin":
                await self.cors(scope, receive, send)
                return
        await self.app(scope, receive, send)
