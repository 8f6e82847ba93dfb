"""The lean upstream HTTP client (gateway.proxy.client) against crafted raw-socket servers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.client import Client, ConnectError, Disconnected, ProtocolError


class RawServer:
    """A TCP server answering each request with ``reply(request_bytes) -> list of (delay, bytes | None)``.

    ``None`` closes the connection. Records every request and connection.
    """

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                for delay, chunk in self.reply(head + body):
                    if delay:  # wait, noticing a client that closes meanwhile
                        try:
                            if await asyncio.wait_for(reader.read(1), delay) == b"":
                                return
                        except asyncio.TimeoutError:
                            pass
                    if chunk is None:
                        writer.close()
                        return
                    writer.write(chunk)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)  # fmt: skip


def run(coro):
    return asyncio.run(coro)


def test_content_length_answer_and_keep_alive_reuse():
    async def main():
        async with RawServer(lambda req: [(0, ok(b'{"a":1}'))]) as srv:
            client = Client()
            pool = client.pool(srv.url)
            for i in range(3):
                resp = await pool.request(b"POST", "/v1/x", [("x-request-id", f"r{i}")], b'{"q":1}', 5)
                assert resp.status == 200
                assert await resp.read() == b'{"a":1}'
            assert srv.connections == 1  # one kept-alive connection for all three
            first = srv.requests[0]
            assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
            assert b"host: 127.0.0.1:%d" % srv.port in first
            assert b"content-length: 7" in first and b"x-request-id: r0" in first
            assert b"accept-encoding" not in first.lower()
            assert first.endswith(b'{"q":1}')
            client.close()

    run(main())


def test_chunked_stream_read_as_it_arrives():
    def reply(_):
        return [
            (0, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"),
            (0, b"7\r\ndata: 1\r\n"),
            (0.05, b"7\r\ndata: 2\r\n"),
            (0.05, b"0\r\n\r\n"),
        ]

    async def main():
        async with RawServer(reply) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/s", (), b"{}", 5)
            parts = []
            while True:
                data = await resp.readany()
                if not data:
                    break
                parts.append(data)
            assert b"".join(parts) == b"data: 1data: 2"
            assert len(parts) >= 2  # the second event was not waited for to deliver the first
            resp.release()
            assert client.pool(srv.url).idle == 1  # a finished stream's connection is kept
            client.close()

    run(main())


def test_body_delimited_by_connection_close():
    async def main():
        async with RawServer(lambda req: [(0, b"HTTP/1.1 200 OK\r\n\r\nhello"), (0, None)]) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/", (), b"", 5)
            assert await resp.read() == b"hello"
            assert client.pool(srv.url).idle == 0
            client.close()

    run(main())


def test_connection_dies_mid_body():
    async def main():
        async with RawServer(lambda req: [(0, ok(b"x" * 100)[:-50]), (0, None)]) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/", (), b"", 5)
            with pytest.raises(Disconnected):
                await resp.read()
            client.close()

    run(main())


def test_connection_dies_before_the_answer():
    async def main():
        async with RawServer(lambda req: [(0, None)]) as srv:
            client = Client()
            with pytest.raises(Disconnected):
                await client.pool(srv.url).request(b"POST", "/", (), b"", 5)
            client.close()

    run(main())


def test_garbage_is_a_protocol_error():
    async def main():
        async with RawServer(lambda req: [(0, b"NOT HTTP AT ALL\r\n\r\n")]) as srv:
            client = Client()
            with pytest.raises(ProtocolError):
                await client.pool(srv.url).request(b"POST", "/", (), b"", 5)
            client.close()

    run(main())


def test_refused_connection_is_a_connect_error():
    async def main():
        async with RawServer(lambda req: []) as srv:
            url = srv.url
        client = Client()
        with pytest.raises(ConnectError) as info:
            await client.pool(url).request(b"POST", "/", (), b"", 5)
        assert isinstance(info.value, OSError)

    run(main())


def test_deadline_raises_timeout_and_drops_the_connection():
    async def main():
        async with RawServer(lambda req: [(5, ok(b"late"))]) as srv:
            client = Client()
            with pytest.raises(TimeoutError):
                await client.pool(srv.url).request(b"POST", "/", (), b"", 0.2)
            await asyncio.wait_for(srv.closed.wait(), 2)  # the server saw the connection close
            client.close()

    run(main())


def test_close_mid_stream_closes_the_upstream_connection():
    def reply(_):
        return [(0, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"), (10, b"0\r\n\r\n")]

    async def main():
        async with RawServer(reply) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/", (), b"", 30)
            assert await resp.readany() == b"abc"
            resp.close()  # what the relay does when its client leaves
            await asyncio.wait_for(srv.closed.wait(), 2)
            client.close()

    run(main())


def test_cancelled_request_drops_its_connection():
    async def main():
        async with RawServer(lambda req: [(10, ok(b"never"))]) as srv:
            client = Client()
            task = asyncio.ensure_future(client.pool(srv.url).request(b"POST", "/", (), b"", 30))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(srv.closed.wait(), 2)
            assert client.pool(srv.url).idle == 0
            client.close()

    run(main())


def test_large_stream_is_flow_controlled_and_complete():
    payload = bytes(range(256)) * 8192  # 2 MiB

    def reply(_):
        return [(0, ok(payload))]

    async def main():
        async with RawServer(reply) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/", (), b"", 10)
            got = bytearray()
            while True:
                await asyncio.sleep(0)  # a slow reader
                data = await resp.readany()
                if not data:
                    break
                got += data
            assert bytes(got) == payload
            client.close()

    run(main())


def test_a_whole_body_larger_than_the_flow_control_mark_is_read_whole():
    """Found when the simulator learnt n > 1 and logprobs: a unary answer over HIGH_WATER paused
    the socket, and read() (which never resumed it) waited until the request's deadline."""
    payload = b"x" * (3 * 1024 * 1024)

    def reply(_):
        answer = ok(payload)
        return [(0, answer[: 1024 * 1024]), (0.05, answer[1024 * 1024 :])]  # the rest arrives later

    async def main():
        async with RawServer(reply) as srv:
            client = Client()
            resp = await client.pool(srv.url).request(b"POST", "/", (), b"", 10)
            await asyncio.sleep(0.02)  # the first MiB is buffered and the socket paused meanwhile
            assert await asyncio.wait_for(resp.read(), 5) == payload
            client.close()

    run(main())


def test_base_path_is_kept():
    async def main():
        async with RawServer(lambda req: [(0, ok(b"{}"))]) as srv:
            client = Client()
            resp = await client.pool(srv.url + "/vllm").request(b"POST", "/v1/chat/completions", (), b"", 5)
            await resp.read()
            assert srv.requests[0].startswith(b"POST /vllm/v1/chat/completions HTTP/1.1")
            client.close()

    run(main())
