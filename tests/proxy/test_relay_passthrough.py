"""The SSE relay forwards chunks it has nothing to change in without a JSON round trip."""

from __future__ import annotations

import asyncio

import orjson

from gateway.context import RequestContext
from gateway.proxy import forward, sse


class FakeResponse:
    def __init__(self, reads: list[bytes]):
        self.reads = list(reads)
        self.released = False

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    def release(self) -> None:
        self.released = True


class FakeUpstream:
    def __init__(self, reads):
        self.response = FakeResponse(reads)
        self.first = b""

    def close(self):
        self.response.release()


async def relay_all(ctx, upstream) -> bytes:
    """What the API sends: the relayed bytes, and each StreamEnd's tail without nudges."""
    out = []
    async for piece in forward.relay(ctx, upstream):
        out.append(piece.tail(ctx, None) if isinstance(piece, forward.StreamEnd) else piece)
    return b"".join(out)


def chunk(i: int, text: str, finish: str | None = None, usage: int | None = None) -> bytes:
    tail = b',"finish_reason":"%s"}]' % finish.encode() if finish else b',"finish_reason":null}]'
    running = b',"usage":{"prompt_tokens":7,"total_tokens":%d,"completion_tokens":%d}' % (7 + usage, usage) if usage else b""
    return (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
            b'"delta":{"content":' + orjson.dumps(text) + b'},"logprobs":null' + tail + running + b"}\n\n")  # fmt: skip


def test_plain_chunks_pass_through_without_json(monkeypatch):
    events = [chunk(i, f"tok{i} ", usage=i + 1) for i in range(30)]
    events.append(chunk(30, "end", finish="length", usage=31))
    usage = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],' \
            b'"usage":{"prompt_tokens":7,"total_tokens":38,"completion_tokens":31}}\n\n'
    body = b"".join(events) + usage + sse.DONE
    reads = [body[i : i + 700] for i in range(0, len(body), 700)]  # events split across reads

    calls = {"loads": 0, "dumps": 0}
    real_loads, real_dumps = orjson.loads, orjson.dumps

    def loads(raw):
        calls["loads"] += 1
        return real_loads(raw)

    def dumps(obj, *a, **k):
        calls["dumps"] += 1
        return real_dumps(obj, *a, **k)

    monkeypatch.setattr(sse.orjson, "loads", loads)
    monkeypatch.setattr(sse.orjson, "dumps", dumps)

    ctx = RequestContext(request_id="r", endpoint="chat", body={}, stream=True, include_usage=False)
    upstream = FakeUpstream(reads)
    out = asyncio.run(relay_all(ctx, upstream))
    during = dict(calls)
    monkeypatch.undo()
    # every content chunk is forwarded as it came, minus the running usage the client did not ask for
    for i in range(30):
        assert chunk(i, f"tok{i} ") in out
    assert chunk(30, "end", finish="length") in out
    assert out.endswith(sse.DONE)
    assert b'"choices":[]' not in out  # the usage chunk was not asked for
    assert ctx.gen_tokens_seen == 31
    # JSON is parsed only for the usage chunk (the gateway needs its counts); nothing re-encoded
    assert during["dumps"] == 0
    assert during["loads"] <= 1
    assert upstream.response.released
