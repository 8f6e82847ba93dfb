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


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
