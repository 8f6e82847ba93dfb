"""A request leaves no garbage in reference cycles: its objects are freed by reference counting
as soon as they are done with, not by a full collection. A cycle per request once held every
request's whole object graph (context, plan, nudges, report, body) until a gen-2 collection, whose
~25 ms pauses were the gateway's p99 (bench/NOTES.md, finding 8). Every feature on, the shipped
policy, energy attribution from the simulator's DCGM page, unary and streamed."""

from __future__ import annotations

import collections
import gc
import http.client
import json

import httpx

from gateway.config import load_config
from gateway.sim.process import start_sim
from tests.support import MEDIUM, InProcessGateway, backend_entry, base_config, wait_until, write_config

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": 8}


def test_requests_leave_no_garbage_in_cycles(tmp_path):
    sim = start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"])
    try:
        config = base_config(tmp_path, [backend_entry("m", sim)])
        with InProcessGateway(load_config(write_config(tmp_path, config))) as gw:
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)

            def pair() -> None:
                for stream in (False, True):
                    conn.request("POST", "/v1/chat/completions", json.dumps({**BODY, "stream": stream}),
                                 {"content-type": "application/json"})  # fmt: skip
                    r = conn.getresponse()
                    r.read()
                    assert r.status == 200, r.status

            for _ in range(30):  # warm: caches, pools, lazily built objects
                pair()
            wait_until(lambda: _energy_final(conn, 60), 20, what="warm-up energy final")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection would free is kept in gc.garbage
            try:
                for _ in range(50):
                    pair()
                wait_until(lambda: _energy_final(conn, 160), 20, what="energy final")
                gc.collect()
                garbage = collections.Counter(type(o).__name__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            conn.close()
        # a few objects may come from the server's own bookkeeping; a cycle per request is 100+
        assert sum(garbage.values()) < 20, garbage.most_common(10)
    finally:
        sim.stop()


def _energy_final(conn: http.client.HTTPConnection, n: int) -> bool:
    """The ledger has ``n`` requests with their energy final (their objects are done with). Asked
    over the test's own connection: an HTTP client made per call would leave cycles of its own."""
    conn.request("GET", "/v1/usage?limit=1000")
    rows = json.loads(conn.getresponse().read())["data"]
    return len(rows) >= n and all(r["energy_final"] for r in rows)
