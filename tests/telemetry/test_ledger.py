"""The usage ledger on SQLite and on PostgreSQL: batching, no loss on close, pagination, threads,
a full buffer; the SQLite file's own properties."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from gateway.context import EnergyReport, Nudge, RequestContext
from gateway.telemetry.ledger import Ledger
from gateway.telemetry.ledger.sqlite import MIGRATIONS, SCHEMA_VERSION


def row(i: int, **kw):
    base = {
        "request_id": f"req-{i:05d}", "ts": 1_800_000_000.0 + i, "key_name": f"key{i % 3}", "team": f"team{i % 2}",
        "endpoint": "chat", "requested_model": "auto", "routed_model": "small" if i % 2 else "large",
        "backend": "b0", "status": 200, "outcome": "ok", "stream": i % 2, "prompt_tokens": 10, "completion_tokens": 20,
        "reasoning_tokens": 0, "reasoning": 0, "energy_j": 100.0 + i, "energy_source": "measured", "co2e_g": 0.01,
        "usd": None, "latency_s": 1.0, "ttft_s": 0.1, "nudges": ["reasoning_on"], "route_reason": "auto:adequate",
        "adequacy": 0.9, "policy_version": "v1",
    }  # fmt: skip
    base.update(kw)
    return base


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "usage.db")


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    """Where a ledger lives: a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "usage.db")
    return request.getfixturevalue("pg_url")


def select(target: str, statement: str) -> list[tuple]:
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            return [tuple(r) for r in conn.execute(statement).fetchall()]
    with sqlite3.connect(target) as conn:
        return conn.execute(statement).fetchall()


def count(target: str) -> int:
    return select(target, "SELECT COUNT(*) FROM requests")[0][0]


def test_rows_are_written_in_batches_by_the_writer_and_nothing_is_lost_on_close(target):
    ledger = Ledger(target, batch_size=50, flush_interval_s=60.0)  # only full batches until close
    for i in range(120):
        ledger.write(row(i))
    deadline = time.monotonic() + 10
    while ledger.written < 100 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ledger.written == 100  # two full batches; the last 20 wait for the interval or close
    ledger.close()
    assert count(target) == 120
    assert ledger.written == 120


def test_the_file_is_in_wal_mode_and_schema_versioned(path):
    Ledger(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    Ledger(path).close()  # reopening does not migrate twice
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_schema_is_refused(path):
    Ledger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        Ledger(path)


def test_row_from_context_has_every_column():
    ctx = RequestContext(request_id="abc", endpoint="chat", body={}, stream=True)
    ctx.key_name, ctx.team, ctx.requested_model, ctx.model, ctx.backend = "alice", "ml", "auto", "small", "b0"
    ctx.status, ctx.outcome, ctx.route_reason, ctx.adequacy, ctx.policy_version = 200, "ok", "auto:adequate", 0.8, "p1"
    ctx.usage = {"prompt_tokens": 12, "completion_tokens": 34, "completion_tokens_details": {"reasoning_tokens": 20}}
    ctx.first_byte, ctx.finished = ctx.received + 0.25, ctx.received + 2.0
    ctx.nudges = [Nudge("reasoning_on", "info", "m"), Nudge("large_model", "warn", "m")]
    ctx.energy = EnergyReport(joules=123.0, source="measured", co2e_g=0.016, usd=0.002)
    r = Ledger.row_from_context(ctx)
    assert r["ts"] == ctx.received_wall
    assert (r["prompt_tokens"], r["completion_tokens"], r["reasoning_tokens"], r["reasoning"]) == (12, 34, 20, 1)
    assert (r["energy_j"], r["energy_source"], r["co2e_g"], r["usd"]) == (123.0, "measured", 0.016, 0.002)
    assert r["ttft_s"] == pytest.approx(0.25) and r["latency_s"] == pytest.approx(2.0)
    assert r["nudges"] == ["reasoning_on", "large_model"]
    assert r["stream"] == 1 and r["routed_model"] == "small" and r["policy_version"] == "p1"
    ctx.key_name, ctx.api_key_hash = None, "sha256:" + "ab" * 32  # an unnamed key: as metrics name it
    assert Ledger.row_from_context(ctx)["key_name"] == "sha256:abababababab"


def test_query_filters_and_paginates_without_gaps_or_repeats(target):
    ledger = Ledger(target, flush_interval_s=0.01)
    for i in range(25):
        ledger.write(row(i))
    ledger.flush()
    seen, cursor = [], None
    while True:
        rows, cursor = ledger.query(limit=10, cursor=cursor)
        seen += [r["request_id"] for r in rows]
        if cursor is None:
            break
    assert seen == [f"req-{i:05d}" for i in reversed(range(25))]  # newest first, each once
    rows, _ = ledger.query(key="key1", model="small", since=1_800_000_005.0, until=1_800_000_020.0)
    assert [r["request_id"] for r in rows] == ["req-00019", "req-00013", "req-00007"]
    assert rows[0]["nudges"] == ["reasoning_on"] and rows[0]["stream"] is True
    assert ledger.query(team="nobody") == ([], None)
    ledger.close()


def test_the_same_request_written_twice_keeps_the_last_row(target):
    ledger = Ledger(target, flush_interval_s=0.01)
    ledger.write(row(1, energy_j=1.0, energy_source="measured-provisional", energy_final=0))
    ledger.flush()
    ledger.write(row(1, energy_j=2.0, energy_source="measured"))
    ledger.close()
    assert select(target, "SELECT energy_j, energy_source FROM requests") == [(2.0, "measured")]


def test_a_provisional_row_never_replaces_a_final_one(target):
    # the request's end (event loop) and its final energy (sampler thread) may reach the queue
    # in either order: the final figure must win both ways
    ledger = Ledger(target, flush_interval_s=0.01)
    ledger.write(row(1, energy_j=2.0, energy_source="measured", energy_final=1))
    ledger.write(row(1, energy_j=1.0, energy_source="measured-provisional", energy_final=0))
    ledger.write(row(2, energy_j=1.0, energy_source="estimated", energy_final=0))
    ledger.write(row(3, energy_j=1.0, energy_source="measured-provisional", energy_final=0))
    ledger.write(row(3, energy_j=3.0, energy_source="measured", energy_final=1))  # the same batch
    ledger.close()
    got = select(target, "SELECT request_id, energy_j, energy_final FROM requests ORDER BY request_id")
    assert [g[1:] for g in got] == [(2.0, 1), (1.0, 0), (3.0, 1)]


def test_a_ledger_of_the_first_schema_is_migrated(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    ledger = Ledger(path, flush_interval_s=0.01)
    ledger.write(row(1, energy_j=2.0))
    ledger.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT energy_j, energy_final FROM requests").fetchall() == [(2.0, 1)]


def test_totals_group_by_model_key_and_team(target):
    ledger = Ledger(target, flush_interval_s=0.01)
    for i in range(6):
        ledger.write(row(i, energy_source="estimated" if i == 0 else "measured"))
    ledger.flush()
    by_model = {r["model"]: r for r in ledger.totals(by="model")}
    assert by_model["large"]["requests"] == 3 and by_model["large"]["energy_j"] == pytest.approx(306.0)
    assert by_model["large"]["estimated"] == 1 and by_model["small"]["completion_tokens"] == 60
    assert {r["key"] for r in ledger.totals(by="key")} == {"key0", "key1", "key2"}
    assert sum(r["requests"] for r in ledger.totals(by="team", since=1_800_000_002.0)) == 4
    ledger.close()


def test_concurrent_writers_from_threads_lose_nothing(target):
    ledger = Ledger(target, batch_size=64, flush_interval_s=0.01)

    def work(n):
        for i in range(250):
            ledger.write(row(n * 1000 + i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    assert count(target) == 2000


def test_a_full_buffer_drops_counts_and_logs_and_never_blocks_a_writer(target, caplog):
    ledger = Ledger(target, batch_size=10, flush_interval_s=0.01, max_buffered=5)
    stalled, gate = threading.Event(), threading.Event()
    insert = ledger.store.insert

    def stalled_database(values):  # the database hangs until the test lets it go
        stalled.set()
        gate.wait()
        insert(values)

    ledger.store.insert = stalled_database  # type: ignore[method-assign]
    ledger.write(row(0))
    assert stalled.wait(5)  # the writer holds row 0
    for i in range(1, 6):  # fills the buffer
        ledger.write(row(i))

    took = []

    def from_a_thread():
        t0 = time.monotonic()
        ledger.write(row(6))
        took.append(time.monotonic() - t0)

    thread = threading.Thread(target=from_a_thread)
    thread.start()
    thread.join(5)

    async def on_the_loop():
        for i in range(7, 9):
            ledger.write(row(i))

    asyncio.run(on_the_loop())
    assert took and took[0] < 0.5  # nobody waits for room
    assert ledger.dropped == 3 and ledger.pending == 6
    assert "1 row(s) dropped" in caplog.text  # the first drop is logged at once (later ones every 10 s)
    gate.set()
    ledger.close()
    assert count(target) == 6 and ledger.dropped == 3  # 9 rows, the 3 past the bound dropped



def test_a_memory_ledger_works_across_threads():
    ledger = Ledger(":memory:", flush_interval_s=0.01)
    ledger.write(row(1))
    ledger.flush()
    rows, _ = ledger.query()
    assert [r["request_id"] for r in rows] == ["req-00001"]
    ledger.close()


def test_the_ledger_file_is_readable_by_its_owner_only(path):
    import os
    import stat

    Ledger(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_prune_deletes_old_rows_in_slices(target):
    ledger = Ledger(target, flush_interval_s=0.01)
    for i in range(25):
        ledger.write(row(i))
    ledger.flush()
    assert ledger.prune(before=1_800_000_010.0, slice_rows=4) == 10  # three slices of 4, 4, 2
    assert count(target) == 15
    assert ledger.prune(before=1_800_000_010.0) == 0
    ledger.close()


def test_rows_name_the_replica_that_wrote_them_and_every_replica_reads_all(target):
    a = Ledger(target, flush_interval_s=0.01, replica="gw-a")
    b = Ledger(target, flush_interval_s=0.01, replica="gw-b") if target.startswith("postgresql") else a
    for i in range(6):
        (a if i % 2 else b).write(row(i))
    a.flush(), b.flush()
    by_replica = {r["replica"]: r["requests"] for r in a.totals(by="replica")}
    expected = {"gw-a": 3, "gw-b": 3} if b is not a else {"gw-a": 6}
    assert by_replica == expected
    # a team's last two answered requests, oldest first, whoever wrote them
    assert a.recent("team0", window=2, since=0.0) == [("key2", 102.0), ("key1", 104.0)]
    assert b.recent("team1", window=2, since=0.0) == [("key0", 103.0), ("key2", 105.0)]
    assert a.recent("team1", window=5, since=1_800_000_002.0) == [("key0", 103.0), ("key2", 105.0)]
    for ledger in {a, b}:
        ledger.close()


def test_the_ledger_counts_are_exported_to_prometheus(target):
    from gateway.telemetry.metrics import Metrics

    metrics = Metrics()
    ledger = Ledger(target, flush_interval_s=0.01)
    metrics.watch_ledger(ledger)
    for i in range(3):
        ledger.write(row(i))
    ledger.flush()
    text = metrics.render()[0].decode()
    assert "gateway_ledger_rows_written_total 3.0" in text
    assert "gateway_ledger_rows_dropped_total 0.0" in text and "gateway_ledger_rows_pending 0.0" in text
    ledger.close()
