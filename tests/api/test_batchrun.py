"""The batch runner against a stand-in app and backend pool: interactive traffic goes first (no
batch request while a backend has one waiting or a full KV cache), at most ``max_inflight`` at
once, a request the gateway fails on is recorded as that line's error; and the store's claims
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.api.batchrun import BatchRunner
from gateway.config import BatchConfig, KeysConfig
from gateway.policy.keys import KeyRing, hash_key
from gateway.proxy.backends import Backend, ServedModel
from gateway.telemetry.ledger import Ledger
from gateway.telemetry.ledger.jobs import JobStore


class Pool:
    """``BackendPool.has_room`` over stand-in backends."""

    def __init__(self) -> None:
        from gateway.config import BackendConfig

        self.backends = [Backend(BackendConfig(name=n, url=f"http://{n}")) for n in ("b", "c")]
        for b in self.backends:
            b.healthy = True
            b.models = {"m": ServedModel("m")}  # both serve one model
        self.kv_limit = BatchConfig().kv_cache_limit

    def has_room(self) -> bool:
        from gateway.proxy.backends import BackendPool

        return BackendPool.has_room(self)  # type: ignore[arg-type]

    def _roomy(self, backend: Backend) -> bool:
        from gateway.proxy.backends import BackendPool

        return BackendPool._roomy(self, backend)  # type: ignore[arg-type]


class App:
    """Answers every request after ``delay``, counting how many run at once; fails line 3."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.running = self.most = self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        body = orjson.loads((await receive())["body"])
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
            if body["messages"][0]["content"] == "3":
                raise RuntimeError("boom")
            payload = orjson.dumps({"object": "chat.completion", "echo": body["messages"][0]["content"]})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-request-id", f"r{self.calls}".encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": payload})
        finally:
            self.running -= 1


NO_KEYS = KeyRing(KeysConfig())


def make_batch(jobs: JobStore, n: int, owner: str | None = None) -> str:
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "auto", "messages": [{"role": "user", "content": str(i)}]}}
             for i in range(n)]  # fmt: skip
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    now = time.time()
    jobs.put_file({"id": "file-1", "purpose": "batch", "filename": "in.jsonl", "bytes": len(data), "created_at": now,
                   "owner": owner, "team": "t", "kind": "upload"}, data)  # fmt: skip
    jobs.put_batch({"id": "batch_1", "created_at": now, "status": "in_progress", "endpoint": "/v1/chat/completions",
                    "input_file_id": "file-1", "completion_window": "24h", "expires_at": now + 86400, "total": n,
                    "team": "t", "in_progress_at": now, "owner": owner})  # fmt: skip
    return "batch_1"


@pytest.fixture(params=["sqlite", "postgres"])
def jobs(request, tmp_path):
    where = str(tmp_path / "usage.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    ledger = Ledger(where)
    yield JobStore(ledger.store)
    ledger.close()


def test_batch_requests_wait_while_a_backend_has_interactive_work_waiting(jobs):
    async def scenario():
        pool, app = Pool(), App()
        pool.backends[1].waiting = 2  # interactive requests queued on one backend
        runner = BatchRunner(jobs, app, pool, BatchConfig(max_inflight=4, poll_interval_s=0.05), "r1", NO_KEYS)  # type: ignore[arg-type]
        batch_id = make_batch(jobs, 12)
        await runner.start()
        await asyncio.sleep(0.5)
        assert app.calls == 0  # nothing sent while the queue is not empty
        pool.backends[1].waiting = 0
        for b in pool.backends:  # KV caches nearly full on every replica of the model hold it back too
            b.kv_usage = 0.95
        await asyncio.sleep(0.3)
        assert app.calls == 0
        pool.backends[0].kv_usage = 0.1  # one replica with room is enough: batch work goes there
        for _ in range(200):
            if jobs.batch(batch_id)["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        await runner.stop()
        return app, batch_id

    app, batch_id = asyncio.run(scenario())
    assert app.calls == 14 and app.most == 4  # line 3 tried three times; never more than max_inflight at once
    batch = jobs.batch(batch_id)
    assert batch["status"] == "completed" and batch["lease_owner"] is None
    assert jobs.counts(batch_id) == (11, 1)  # line 3: the gateway failed on it, recorded as its error
    failed = [orjson.loads(line) for line in b"".join(jobs.result_chunks(batch_id, ok=False)).splitlines()]
    assert [(f["custom_id"], f["error"]["code"]) for f in failed] == [("c3", "internal_error")]
    answers = [orjson.loads(line) for line in b"".join(jobs.result_chunks(batch_id, ok=True)).splitlines()]
    assert [a["custom_id"] for a in answers] == [f"c{i}" for i in range(12) if i != 3]  # in input order
    assert answers[0]["response"]["body"]["echo"] == "0"
    # read a page at a time, the file is the same, and sized without holding it whole
    pages = list(jobs.result_chunks(batch_id, ok=True, page=4))
    assert [len(p.splitlines()) for p in pages] == [4, 4, 3] and b"".join(pages) == b"".join(
        jobs.result_chunks(batch_id, ok=True))
    assert jobs.result_size(batch_id, ok=True) == len(b"".join(pages))


def test_a_claim_is_one_replicas_until_it_lapses_and_a_line_is_recorded_once(jobs):
    batch_id = make_batch(jobs, 2)
    now = time.time()
    assert jobs.claim("a", now, 10.0, 4) == [batch_id]
    assert jobs.claim("b", now + 1, 10.0, 4) == []  # a holds it
    assert jobs.claim("a", now + 1, 10.0, 4) == [batch_id]  # its own, again
    assert jobs.renew(batch_id, "a", now + 5, 10.0)
    assert jobs.claim("b", now + 14, 10.0, 4) == []  # renewed until now + 15
    assert jobs.claim("b", now + 16, 10.0, 4) == [batch_id]  # lapsed: b takes it over
    assert not jobs.renew(batch_id, "a", now + 16, 10.0)  # and a learns it lost it
    assert jobs.add_result(batch_id, 0, "c0", 200, "r1", {"ok": 1}, None)
    assert not jobs.add_result(batch_id, 0, "c0", 200, "r2", {"ok": 2}, None)  # ran twice: recorded once
    assert jobs.done_lines(batch_id) == {0}


def test_prune_deletes_ended_batches_with_their_answers_and_keeps_running_ones(jobs):
    batch_id = make_batch(jobs, 2)
    jobs.add_result(batch_id, 0, "c0", 200, "r1", {"ok": 1}, None)
    later = time.time() + 10
    assert jobs.prune(later) == 0  # still in progress: kept
    jobs.update_batch(batch_id, {"status": "completed", "completed_at": time.time()})
    jobs.put_file({"id": "file-out", "purpose": "batch_output", "filename": "o.jsonl", "bytes": 1,
                   "created_at": time.time(), "batch_id": batch_id, "kind": "batch_output"}, None)  # fmt: skip
    assert jobs.prune(time.time() - 3600) == 0  # created after the cutoff: kept
    assert jobs.prune(later) == 1
    assert jobs.batch(batch_id) is None and jobs.done_lines(batch_id) == set() and jobs.file("file-out") is None
    assert jobs.file("file-1") is not None  # the upload expires on its own schedule


async def _until_ended(jobs: JobStore, batch_id: str, seconds: float = 10.0) -> dict:
    for _ in range(int(seconds / 0.05)):
        batch = jobs.batch(batch_id)
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch still {jobs.batch(batch_id)['status']}")


def test_an_answer_the_store_cannot_take_at_once_is_kept_and_the_batch_never_ends_short(jobs):
    from gateway.telemetry.ledger import LedgerUnavailable

    add = jobs.add_result
    failures = {5: 2}  # line 5's answer: the store is away twice

    def flaky(batch_id, line, *rest):
        if failures.get(line):
            failures[line] -= 1
            raise LedgerUnavailable("the store blinked")
        return add(batch_id, line, *rest)

    jobs.add_result = flaky  # type: ignore[method-assign]

    async def scenario():
        runner = BatchRunner(jobs, App(), Pool(), BatchConfig(poll_interval_s=0.05), "r1", NO_KEYS)  # type: ignore[arg-type]
        batch_id = make_batch(jobs, 8)
        await runner.start()
        batch = await _until_ended(jobs, batch_id)
        await runner.stop()
        return batch

    batch = asyncio.run(scenario())
    assert batch["status"] == "completed" and jobs.counts(batch["id"]) == (7, 1)  # all 8 answered (line 3 fails)
    assert 5 in jobs.done_lines(batch["id"])


def test_a_batch_of_a_removed_key_fails_without_sending_and_a_cancel_stops_a_batch_waiting_for_room(jobs):
    async def scenario():
        app, pool = App(), Pool()
        keys = KeyRing(KeysConfig(keys=[{"name": "alice", "team": "t", "hash": hash_key("sk-alice")}]))
        runner = BatchRunner(jobs, app, pool, BatchConfig(poll_interval_s=0.05), "r1", keys)  # type: ignore[arg-type]
        batch_id = make_batch(jobs, 3, owner=hash_key("sk-removed"))
        await runner.start()
        revoked = await _until_ended(jobs, batch_id)
        assert app.calls == 0
        # a batch of a configured key, with the backends busy: a cancel ends it all the same
        for table in ("batches", "files", "batch_results"):  # the next batch reuses the ids
            jobs.store.execute(f"DELETE FROM {table}", [])
        pool.backends[0].waiting = 5
        waiting = make_batch(jobs, 3, owner=hash_key("sk-alice"))
        await asyncio.sleep(0.3)
        jobs.update_batch(waiting, {"status": "cancelling", "cancelling_at": time.time()})
        cancelled = await _until_ended(jobs, waiting)
        await runner.stop()
        return revoked, cancelled, app

    revoked, cancelled, app = asyncio.run(scenario())
    assert revoked["status"] == "failed" and revoked["errors"]["data"][0]["code"] == "key_revoked"
    assert cancelled["status"] == "cancelled" and app.calls == 0
    assert jobs.counts(cancelled["id"]) == (0, 3)


def test_a_stopped_batchs_unsent_lines_are_recorded_a_few_hundred_a_statement(jobs):
    assert jobs.add_result("batch_x", 1, "c1", 200, "r1", {"ok": True}, None)
    unsent = [(i, f"c{i}") for i in range(1201)]  # line 1 has its answer: kept, not overwritten
    assert jobs.add_errors("batch_x", unsent, {"code": "batch_cancelled", "message": "cancelled"}) == 1200
    assert jobs.counts("batch_x") == (1, 1200)
    errors = [orjson.loads(line) for line in b"".join(jobs.result_chunks("batch_x", ok=False)).splitlines()]
    assert len(errors) == 1200 and errors[-1]["custom_id"] == "c1200" and errors[0]["error"]["code"] == "batch_cancelled"


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_a_list_page_reads_its_batches_counts_and_usage_in_one_query_each(where, request, tmp_path):
    from tests.telemetry.test_ledger import row

    ledger = Ledger(str(tmp_path / "usage.db") if where == "sqlite" else request.getfixturevalue("pg_url"))
    jobs = JobStore(ledger.store)
    try:
        for i in range(3):
            ledger.write(row(i, energy_j=10.0 * (i + 1), prompt_tokens=5, completion_tokens=7))
        assert ledger.flush(10)
        jobs.add_result("b1", 0, "c0", 200, "req-00000", {"ok": True}, None)
        jobs.add_result("b1", 1, "c1", 500, "req-00001", None, {"code": "x", "message": "failed"})
        jobs.add_result("b2", 0, "c0", 200, "req-00002", {"ok": True}, None)
        ids = ["b1", "b2", "b3"]  # b3 has no answer yet
        assert jobs.counts_of(ids) == {"b1": (1, 1), "b2": (1, 0), "b3": (0, 0)} and jobs.counts_of([]) == {}
        usage = jobs.usage_of(ids)
        assert (usage["b1"]["rows"], usage["b1"]["prompt"], usage["b1"]["completion"]) == (2, 10, 14)
        assert float(usage["b1"]["joules"]) == 30.0 and float(usage["b2"]["joules"]) == 30.0
        assert usage["b3"] == {"rows": 0, "prompt": 0, "completion": 0, "joules": 0, "provisional": 0, "estimated": 0}
        assert jobs.usage("b1") == usage["b1"] and jobs.counts("b2") == (1, 0)
    finally:
        ledger.close()
