"""uvicorn's httptools protocol, writing each response head together with its body.

uvicorn writes the status line and headers (``http.response.start``) and then the body
(``http.response.body``) with two ``transport.write`` calls, so every answer costs two
``send`` system calls and, on the client's side, often two wake-ups. On the benchmark
machine a loopback ``send`` costs several microseconds, a fair share of what the whole
gateway spends on a request (see bench/NOTES.md).

``GatewayHttpProtocol`` gives uvicorn a transport that holds a response head back until
the next write (the body) and sends both at once; if nothing follows within the same
turn of the event loop (an app that starts a response and waits), the head goes out on
its own on the next turn. Everything else is uvicorn's, unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_JOIN_LIMIT = 16 * 1024  # larger bodies go out as a vectored write instead of a copy


class CoalescingTransport:
    """A transport that sends a held response head with the next write."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(held + data)
            else:
                self._transport.writelines((held, data))
            return
        if data[:5] == b"HTTP/":  # a response head: wait for its body
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_BUSY_BODY = (
    b'{"error":{"message":"The gateway has too many open connections; retry shortly.",'
    b'"type":"server_error","param":null,"code":"server_busy"}}'
)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``, with two guards uvicorn lacks.

    * **At most ``max_connections`` open connections.** One more is answered 503 (OpenAI's error
      shape, ``retry-after``) and closed at once, before anything is read from it. (uvicorn's own
      ``limit_concurrency`` only looks once a request's headers are complete, so connections that
      never finish their headers are not bounded by it.)
    * **A request's headers must arrive within ``header_timeout_s``** of its first byte (or of the
      connection opening): a client that trickles them in (slowloris) is disconnected. The body's
      own deadline is the app's (``Request.body``).

    ``configured(...)`` makes a subclass with the limits set, for uvicorn's ``http=``.
    """

    max_connections: int | None = None
    header_timeout_s: float | None = None

    @classmethod
    def configured(cls, max_connections: int | None, header_timeout_s: float | None) -> type[GatewayHttpProtocol]:
        return type(cls.__name__, (cls,), {"max_connections": max_connections, "header_timeout_s": header_timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self.connections.add(self)  # connection_lost discards it
            self.transport = transport
            self.flow = None  # type: ignore[assignment]
            transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
            transport.close()
            return
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self.header_timeout_s is not None and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self.flow is not None:  # None: refused in connection_made, closing
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if self.flow is None:  # refused in connection_made
            self.connections.discard(self)
            return
        super().connection_lost(exc)
