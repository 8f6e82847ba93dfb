"""gateway.api.server: a response head goes out with its body, in one write."""

from __future__ import annotations

import asyncio

from gateway.api.server import CoalescingTransport


class FakeTransport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.writes.append(bytes(data))

    def writelines(self, chunks):
        self.writes.append(b"".join(chunks))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_head_and_body_are_one_write():
    async def main():
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert real.writes == []
        t.write(b"{}")
        assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        t.write(b"more")  # later writes go straight through
        assert real.writes[-1] == b"more"

    asyncio.run(main())


def test_a_head_alone_goes_out_on_the_next_loop_turn():
    async def main():
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]

    asyncio.run(main())


def test_close_flushes_a_held_head_and_large_bodies_are_not_copied():
    async def main():
        real = FakeTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        t.close()
        assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and real.closed
        real2 = FakeTransport()
        t2 = CoalescingTransport(real2, asyncio.get_running_loop())
        big = b"x" * 100_000
        t2.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t2.write(big)
        assert real2.writes == [b"HTTP/1.1 200 OK\r\n\r\n" + big]
        assert t2.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the real transport's

    asyncio.run(main())
