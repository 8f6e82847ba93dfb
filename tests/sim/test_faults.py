"""Failure injection (``POST /debug/fault``) for the gateway's error-path tests."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .helpers import HI, chat, metric, split_sse

STREAM = {"messages": HI, "stream": True, "max_tokens": 10}


@pytest.fixture(scope="module")
def sim(start):
    return start("--speed", "50")


@pytest.fixture(autouse=True)
def clear(sim):
    yield
    sim.fault("none")


def stream_raw(sim, body=STREAM) -> bytes:
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        return r.read()


def test_error_before_first_byte_for_count_requests(sim):
    sim.fault("error_before_first_byte", status=503, count=2)
    for _ in range(2):
        r = chat(sim, {"messages": HI, "max_tokens": 2})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
    assert chat(sim, {"messages": HI, "max_tokens": 2}).status_code == 200


def test_die_midstream_closes_the_connection_after_k_events(sim):
    sim.fault("die_midstream", after_chunks=3, count=1)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", sim.url + "/v1/chat/completions", json=STREAM) as r:
            for chunk in r.iter_raw():
                received += chunk
    assert received.count(b"data: ") == 3 and b"[DONE]" not in received
    assert len(split_sse(stream_raw(sim))) == 1 + 10 + 1  # the next stream is whole again


def test_die_midstream_cuts_a_non_streaming_body(sim):
    sim.fault("die_midstream", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(sim, {"messages": HI, "max_tokens": 5})


def test_midstream_error_event_then_done(sim):
    sim.fault("midstream_error_event", after_chunks=2, count=1, message="boom")
    *events, done = split_sse(stream_raw(sim))
    assert done == b"[DONE]" and len(events) == 3
    assert json.loads(events[2]) == {
        "error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}
    }
    assert events[2].startswith(b'{"error": {"message": "boom"')  # json.dumps spacing, as vLLM writes it
    assert chat(sim, {"messages": HI, "max_tokens": 2}).status_code == 200  # non-streaming is not affected


def test_midstream_error_event_is_flat_inside_before_0_10_1(start):
    old = start("--speed", "50", "--vllm-version", "0.10.0")
    old.fault("midstream_error_event", after_chunks=1, message="lost", status=500)
    *events, done = split_sse(stream_raw(old))
    assert json.loads(events[-1]) == {
        "error": {"object": "error", "message": "lost", "type": "InternalServerError", "param": None, "code": 500}
    }


def test_hang_sends_nothing_and_an_abandoned_stream_is_aborted(sim):
    sim.fault("hang", count=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.url + "/v1/chat/completions", json={"messages": HI}, timeout=httpx.Timeout(5, read=0.3))
    aborts = metric(sim, "vllm:request_success_total", finished_reason="abort")
    sim.fault("hang", after_chunks=2, count=1)
    endless = {"messages": HI, "stream": True, "ignore_eos": True}  # still generating when the client gives up
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream(
            "POST", sim.url + "/v1/chat/completions", json=endless, timeout=httpx.Timeout(5, read=0.3)
        ) as r:
            for _ in r.iter_raw():
                pass
    deadline = time.monotonic() + 1
    while metric(sim, "vllm:request_success_total", finished_reason="abort") == aborts:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_engine_dead_fails_health_and_requests_until_cleared(sim):
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json={"messages": HI, "stream": True}) as r:
        chunks = r.iter_raw()
        next(chunks)
        sim.fault("engine_dead")
        rest = b"".join(chunks)
    assert b'"error"' in rest and rest.endswith(b"data: [DONE]\n\n")  # the stream in flight fails
    assert httpx.get(sim.url + "/health").status_code == 503
    r = chat(sim, {"messages": HI, "max_tokens": 2})
    assert r.status_code == 500 and r.content == b""  # vLLM's EngineDeadError handler: a bare 500
    sim.fault("none")
    assert httpx.get(sim.url + "/health").status_code == 200
    assert chat(sim, {"messages": HI, "max_tokens": 2}).status_code == 200


def test_refuse_connections_for_a_while_then_accept_again(sim):
    sim.fault("refuse_connections", duration_s=0.4)
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/health")
    time.sleep(0.5)
    assert httpx.get(sim.url + "/health").status_code == 200


def test_refusing_until_cleared_by_signal_or_keep_alive(sim):
    with httpx.Client(base_url=sim.url) as keep_alive:
        assert keep_alive.post("/debug/fault", json={"mode": "refuse_connections"}).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(sim.url + "/health")
        assert keep_alive.post("/debug/fault", json={"mode": "none"}).json() == {"active": None}
    assert httpx.get(sim.url + "/health").status_code == 200
    sim.fault("refuse_connections")
    sim.clear_faults()  # SIGUSR1
    deadline = time.monotonic() + 2
    while True:
        try:
            assert httpx.get(sim.url + "/health").status_code == 200
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_bad_fault_specs_are_rejected(sim):
    for spec in ({"mode": "explode"}, {"mode": "hang", "count": 0}, {"mode": "error_before_first_byte", "status": 418}):
        r = httpx.post(sim.url + "/debug/fault", json=spec)
        assert r.status_code == 400
    assert httpx.get(sim.url + "/debug/fault").json() == {"active": None}
