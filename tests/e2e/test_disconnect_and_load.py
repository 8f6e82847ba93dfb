"""Clients that leave make vLLM abort; many clients at once lose nothing; a dead backend is survived."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest

from gateway.sim.process import start_sim
from tests.support import MEDIUM, backend_entry, base_config, sim_counter
from tests.support import GatewayProcess, wait_until, write_config

LONG = {"model": MEDIUM, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 4000}


def raw_post(url: str, payload: dict) -> socket.socket:
    """Send a request on a bare socket so the test can hang up whenever it likes."""
    host, port = url.removeprefix("http://").split(":")
    body = orjson.dumps(payload)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """A gateway in front of one simulator at real speed: answers take seconds, time to hang up."""
    tmp = tmp_path_factory.mktemp("slow")
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "realistic"]) as sim:
        with GatewayProcess(write_config(tmp, base_config(tmp, [backend_entry("m", sim)]))) as gw:
            yield gw, sim


def test_streaming_client_that_drops_aborts_upstream(slow):
    gateway, sim = slow
    before = sim_counter(sim, "vllm:request_success_total", finished_reason="abort")
    sock = raw_post(gateway.url, {**LONG, "stream": True})
    received = b""
    while b"data: " not in received:  # wait until the stream has started
        received += sock.recv(4096)
    sock.close()
    dropped = time.monotonic()
    wait_until(lambda: sim_counter(sim, "vllm:request_success_total", finished_reason="abort") > before, 1.0,
               what="abort on the simulator")
    assert time.monotonic() - dropped < 1.0


def test_non_streaming_client_that_drops_aborts_upstream(slow):
    gateway, sim = slow
    before = sim_counter(sim, "vllm:request_success_total", finished_reason="abort")
    sock = raw_post(gateway.url, LONG)
    wait_until(lambda: sim_counter(sim, "vllm:num_requests_running") >= 1, 5, what="request running upstream")
    sock.close()
    wait_until(lambda: sim_counter(sim, "vllm:request_success_total", finished_reason="abort") > before, 1.0,
               what="abort on the simulator")


async def _stream_tokens(client: httpx.AsyncClient, url: str, i: int) -> tuple[list[str], dict]:
    payload = {"model": MEDIUM, "messages": [{"role": "user", "content": f"client {i}: count for me"}],
               "max_tokens": 40, "stream": True, "stream_options": {"include_usage": True}}
    tokens, usage = [], {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if chunk["choices"]:
                tokens.append(chunk["choices"][0]["delta"].get("content", ""))
            else:
                usage = chunk["usage"]
    return tokens, usage


def test_200_concurrent_streams_deliver_every_token_in_order(gateway):
    async def run():
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            results = await asyncio.gather(*(_stream_tokens(client, gateway.url, i) for i in range(200)))
        async with httpx.AsyncClient(timeout=60) as client:
            # the same prompts once more, non-streaming: the simulator is deterministic, so
            # each stream must have carried exactly the unary answer's text, in order
            unary = []
            for i in range(200):
                payload = {"model": MEDIUM, "messages": [{"role": "user", "content": f"client {i}: count for me"}],
                           "max_tokens": 40}
                unary.append((await client.post(f"{gateway.url}/v1/chat/completions", json=payload)).json())
        return results, unary

    results, unary = asyncio.run(run())
    assert len(results) == 200
    for (tokens, usage), answer in zip(results, unary):
        assert "".join(tokens) == answer["choices"][0]["message"]["content"]
        assert usage["completion_tokens"] == answer["usage"]["completion_tokens"]


def test_backend_killed_during_load_fails_over(tmp_path):
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "20"]) as a, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "20"]) as b:
        config = base_config(tmp_path, [backend_entry("a", a), backend_entry("b", b)])
        with GatewayProcess(write_config(tmp_path, config)) as gw:

            async def one(client, i):
                payload = {"model": MEDIUM, "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 20}
                r = await client.post(f"{gw.url}/v1/chat/completions", json=payload)
                return r.status_code

            async def run():
                async with httpx.AsyncClient(timeout=60) as client:
                    first = asyncio.gather(*(one(client, i) for i in range(60)))
                    await asyncio.sleep(0.05)
                    a.kill()  # some requests are in flight on a, some not yet sent
                    statuses = await first
                    after = await asyncio.gather(*(one(client, i) for i in range(40)))
                    return statuses, after

            statuses, after = asyncio.run(run())
            # unary requests caught on a had sent no byte to their client: they fail over
            assert statuses == [200] * 60
            assert after == [200] * 40  # later ones all go to the survivor
            assert httpx.get(f"{gw.url}/healthz").status_code == 200
