"""A lean HTTP/1.1 client for the one upstream call on the hot path.

Why not aiohttp here: profiled under load (bench/NOTES.md), aiohttp's request machinery
(ClientRequest/ClientResponse objects, payload wrappers, header multidicts, timer contexts)
was about a quarter of the gateway's CPU per request. This client does only what the proxy
needs: one POST with a small JSON body on a kept-alive connection, the status, then either
the whole body or the body as it arrives. It is an ``asyncio.Protocol`` with httptools'
response parser (the C parser uvicorn uses), so a request costs one ``write`` and, for a
small answer, one ``data_received`` that parses headers and body in a single call.

What it keeps from aiohttp's behaviour, on purpose:

- connections are reused for ``keepalive_s`` (4 s, shorter than vLLM/uvicorn's 5 s idle
  timeout, so a connection the server is about to close is never reused) and are never
  limited in number (vLLM queues without limit; the gateway must not add a queue);
- a failed connect raises ``ConnectError`` (an ``OSError``; ``ConnectionRefusedError`` and
  friends keep their class), a connection that dies before the answer is complete raises
  ``Disconnected`` (an ``OSError``), a broken answer ``ProtocolError``, and the deadline
  ``TimeoutError``;
- ``close()`` drops the TCP connection, which is how vLLM learns to abort the request;
- no ``Accept-Encoding`` is sent, so bodies arrive as sent (the proxy never decompresses).

Streaming reads are flow-controlled: past ``HIGH_WATER`` unread bytes the socket stops
being read until the relay catches up.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024


class UpstreamError(OSError):
    """Base of this client's errors; an OSError so callers catching OSError see them."""


class ConnectError(UpstreamError):
    """Nobody answered the connect (refused, unreachable, name unknown)."""


class Disconnected(UpstreamError):
    """The connection closed before the answer was complete."""


class ProtocolError(UpstreamError):
    """The upstream sent something that is not HTTP/1.1."""


class Response:
    """One upstream answer: ``status`` and ``headers`` at once, the body by ``read``/``readany``."""

    __slots__ = (
        "conn", "status", "headers", "keep_alive", "_chunks", "_size", "_headers_done", "complete",
        "_waiter", "_exc", "_paused", "_whole", "_framed", "_timer", "_done",
    )  # fmt: skip

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self.complete = False
        self._waiter: asyncio.Future | None = None
        self._exc: BaseException | None = None
        self._paused = False
        self._whole = False  # read() wants the whole body: no flow control
        self._framed = False  # content-length or chunked: the end is known without EOF
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # released or closed: the connection is no longer ours

    # ------------------------------------------------------------------ parser side

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None and not self.complete:
            self._exc = exc
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not (self._paused or self._whole) and self.conn.transport is not None:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    # ------------------------------------------------------------------ caller side

    async def _wait(self) -> None:
        waiter = self._waiter = self.conn.loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled (client gone, deadline): the connection is unusable
            self.close()
            raise

    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool.

        Flow control is for streams read as they arrive: here the whole body is wanted, so a
        socket paused at ``HIGH_WATER`` is resumed (else an answer larger than it never completes).
        """
        self._whole = True
        if self._paused:
            self._paused = False
            if self.conn.transport is not None:
                self.conn.transport.resume_reading()
        while not self.complete:
            if self._exc is not None:
                self.close()
                raise self._exc
            await self._wait()
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self.release()
        return body

    async def readany(self) -> bytes:
        """What has arrived since the last call (waiting for something), b'' at the end."""
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._size = 0
                if self._paused:
                    self._paused = False
                    if self.conn.transport is not None:
                        self.conn.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait()

    def release(self) -> None:
        """Done with the answer: a complete, kept-alive connection is reused, else dropped."""
        if self._done:
            return
        if not self.complete or not self.keep_alive:
            self.close()
            return
        self._done = True
        self._cancel_timer()
        self.conn.finished(reuse=True)

    def close(self) -> None:
        """Drop the connection (an unfinished request is aborted upstream)."""
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        self.conn.finished(reuse=False)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> None:
        self._timer = None
        self._fail(TimeoutError("upstream request timed out"))
        self.close()


class _Conn(asyncio.Protocol):
    __slots__ = ("pool", "loop", "transport", "parser", "response", "closed", "idle_since")

    def __init__(self, pool: HostPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None or resp._done:  # nothing asked: a confused server; never reuse
            self._drop()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp._fail(ProtocolError(f"invalid HTTP answer from upstream: {exc}"))
            self._drop()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and not resp.complete:
            if resp._headers_done and not resp._framed:
                resp.complete = True  # a body delimited by the end of the connection
                resp.keep_alive = False
                resp._wake()
            else:
                resp._fail(Disconnected("upstream closed the connection before the answer was complete"))
        self.pool._forget(self)

    def pause_writing(self) -> None:  # request bodies are small and written at once
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        if resp is not None:
            resp.headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                resp._framed = True

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is not None:
            resp.status = self.parser.get_status_code()
            resp.keep_alive = self.parser.should_keep_alive()
            resp._headers_done = True
            resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.response
        if resp is not None:
            resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is not None:
            if resp.status and resp.status < 200:  # 1xx: the real answer follows
                resp._headers_done = False
                resp.headers = []
                resp._framed = False
                return
            resp.complete = True
            resp._wake()

    # --- pool side
    def finished(self, reuse: bool) -> None:
        self.response = None
        if reuse and not self.closed and self.transport is not None and not self.transport.is_closing():
            self.idle_since = time.monotonic()
            self.pool._idle.append(self)
        else:
            self._drop()

    def _drop(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HostPool:
    """Kept-alive connections to one ``scheme://host:port``; any number, reused newest first."""

    def __init__(
        self, base_url: str, connect_timeout_s: float = 5.0, keepalive_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")  # a base path the backend is mounted under
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = (self.https and self.port == 443) or (not self.https and self.port == 80)
        self.host_header = (host if default else f"{host}:{self.port}").encode("idna")
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._ssl = (ssl_context or ssl.create_default_context()) if self.https else None
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()

    # ------------------------------------------------------------------ requests

    async def request(
        self, method: bytes, path: str, headers: list[tuple[str, str]] | tuple = (), body: bytes = b"",
        timeout_s: float | None = None,
    ) -> Response:  # fmt: skip
        """Send one request; return once the status and headers are in (the body follows)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else None
        conn = self._take_idle() or await self._connect(loop, deadline)
        resp = Response(conn)
        conn.response = resp
        if deadline is not None:
            resp._timer = loop.call_at(deadline, resp._deadline)
        head = [method, b" ", (self.prefix + path).encode("latin-1"), b" HTTP/1.1\r\nhost: ", self.host_header,
                b"\r\ncontent-length: ", str(len(body)).encode()]  # fmt: skip
        for name, value in headers:
            head += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        head.append(b"\r\n\r\n")
        head.append(body)
        try:
            conn.transport.write(b"".join(head))  # type: ignore[union-attr]
            await resp.wait_headers()
        except BaseException:
            resp.close()
            raise
        return resp

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        oldest = time.monotonic() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing() or conn.idle_since < oldest:
                conn._drop()
                continue
            return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> _Conn:
        timeout = self.connect_timeout_s
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - loop.time()))
        conn = _Conn(self, loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )  # fmt: skip
        except TimeoutError:
            conn._drop()
            raise TimeoutError(f"connect to {self.host}:{self.port} timed out") from None
        except (ConnectionError, socket.gaierror, ssl.SSLError) as exc:
            conn._drop()
            raise ConnectError(exc.errno or 0, f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        except OSError as exc:  # unreachable network, no route, ...
            conn._drop()
            raise ConnectError(exc.errno or 0, f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def open(self) -> int:
        return len(self._all)

    def close(self) -> None:
        for conn in list(self._all):
            conn._drop()
        self._idle.clear()


class Client:
    """One ``HostPool`` per backend base URL."""

    def __init__(self, connect_timeout_s: float = 5.0, keepalive_s: float = 4.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._pools: dict[str, HostPool] = {}

    def pool(self, base_url: str) -> HostPool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = HostPool(base_url, self.connect_timeout_s, self.keepalive_s)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def stats(self) -> dict[str, Any]:
        return {url: {"open": p.open, "idle": p.idle} for url, p in self._pools.items()}
