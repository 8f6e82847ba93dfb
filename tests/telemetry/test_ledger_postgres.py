"""The PostgreSQL ledger under the faults of a shared database: replicas migrating at once, the
database away at start, cut mid-stream, still away at shutdown (a real PostgreSQL behind a relay
the test cuts)."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from gateway.telemetry.ledger import Ledger
from gateway.telemetry.ledger.postgres import SCHEMA_VERSION, redact
from tests.support import TcpRelay, wait_until
from tests.telemetry.test_ledger import count, row


@pytest.fixture
def relay(pg_url):
    relay = TcpRelay("127.0.0.1", 5432)
    yield relay
    relay.close()


def test_replicas_starting_together_migrate_once(pg_url):
    ledgers, errors = [], []
    go = threading.Barrier(6)

    def start():
        go.wait()
        try:
            ledgers.append(Ledger(pg_url))
        except Exception as exc:  # noqa: BLE001 - the test reports any
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(ledgers) == 6
    for ledger in ledgers:
        ledger.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)
        ]


def test_a_database_of_a_newer_schema_is_refused(pg_url):
    Ledger(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer"):
        Ledger(pg_url)


def test_logs_name_the_database_without_its_password():
    assert redact("postgresql://nudge:s3cret@db.example:6543/usage?sslmode=require") == (
        "postgresql://nudge@db.example:6543/usage"
    )


def test_a_database_away_at_start_is_migrated_when_it_answers(pg_url, relay, caplog):
    relay.cut()
    ledger = Ledger(relay.url_for(pg_url), flush_interval_s=0.01)  # starts: the gateway serves meanwhile
    assert "unreachable at start" in caplog.text
    for i in range(20):
        ledger.write(row(i))
    time.sleep(0.3)
    assert ledger.pending == 20 and ledger.written == 0
    relay.restore()
    assert ledger.flush(15)
    assert count(pg_url) == 20
    ledger.close()


def test_rows_wait_while_the_database_is_cut_and_are_written_when_it_returns(pg_url, relay, caplog):
    ledger = Ledger(relay.url_for(pg_url), flush_interval_s=0.01)
    for i in range(10):
        ledger.write(row(i))
    assert ledger.flush(10)
    relay.cut()
    caplog.set_level(logging.ERROR, "gateway.ledger")
    for i in range(10, 60):
        ledger.write(row(i))
    wait_until(lambda: ledger.write_errors > 0, 10, what="a failed write")
    assert ledger.pending == 50 and ledger.dropped == 0
    assert "write failed" in caplog.text
    relay.restore()
    assert ledger.flush(15)
    assert count(pg_url) == 60 and ledger.dropped == 0
    ledger.close()


def test_a_database_still_away_at_shutdown_costs_counted_rows_and_a_bounded_wait(pg_url, relay, caplog):
    ledger = Ledger(relay.url_for(pg_url), flush_interval_s=0.01, close_timeout_s=0.5)
    ledger.write(row(0))
    assert ledger.flush(10)
    relay.cut()
    for i in range(1, 8):
        ledger.write(row(i))
    t0 = time.monotonic()
    ledger.close()
    assert time.monotonic() - t0 < 10  # the close timeout, plus at most one connection attempt
    assert ledger.dropped == 7 and ledger.pending == 0
    assert "7 row(s) dropped: the database is still unreachable at shutdown" in caplog.text
    assert count(pg_url) == 1


def test_reads_while_the_database_is_away_are_a_503_and_a_clear_cli_error(pg_url, relay, capsys):
    import asyncio

    from gateway.api.usage import usage_endpoint
    from gateway.cli import main
    from gateway.errors import GatewayError

    ledger = Ledger(relay.url_for(pg_url), flush_interval_s=0.01)
    relay.cut()
    with pytest.raises(GatewayError) as refused:
        asyncio.run(usage_endpoint(ledger, {}))
    assert refused.value.status == 503 and refused.value.code == "ledger_unavailable"
    assert refused.value.headers == {"retry-after": "5"}
    ledger.close()

    for argv in (["report"], ["ledger", "prune", "--older-than", "90d"]):
        t0 = time.monotonic()
        assert main([*argv, "--ledger", relay.url_for(pg_url)]) == 1
        assert time.monotonic() - t0 < 10
        err = capsys.readouterr().err
        assert err.startswith("error: cannot reach the usage ledger postgresql://root@127.0.0.1:") and "\n" == err[-1]
        assert "Traceback" not in err


def test_a_row_the_database_refuses_is_dropped_alone_and_the_writer_goes_on(pg_url, caplog):
    ledger = Ledger(pg_url, flush_interval_s=0.01)
    for i in range(10):  # one batch; row 5 has a token count PostgreSQL's INTEGER cannot take
        ledger.write(row(i, prompt_tokens="many" if i == 5 else 10, requested_model="a\x00b" if i == 7 else "auto"))
    assert ledger.flush(10)
    assert ledger.dropped == 1 and ledger.written == 9 and ledger.pending == 0
    assert "refused the row of request req-00005" in caplog.text
    ledger.write(row(10))  # the writer lives on
    assert ledger.flush(10)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 10
        # a NUL the client sent is replaced, not a reason to lose the row
        assert conn.execute("SELECT requested_model FROM requests WHERE request_id = 'req-00007'").fetchone() == (
            "a\ufffdb",
        )
    ledger.close()


def test_a_table_locked_by_maintenance_bounds_the_shutdown(pg_url, caplog):
    ledger = Ledger(pg_url, flush_interval_s=0.01, close_timeout_s=1.0)
    ledger.write(row(0))
    assert ledger.flush(10)
    with psycopg.connect(pg_url) as maintenance:
        maintenance.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")  # as VACUUM FULL, ALTER TABLE
        ledger.write(row(1))
        time.sleep(0.2)
        t0 = time.monotonic()
        ledger.close()
        took = time.monotonic() - t0
        maintenance.rollback()
    assert took < 15  # the lock timeout (5 s) ends the call in flight; then the close deadline
    assert ledger.dropped == 1 and "still unreachable at shutdown" in caplog.text


def test_reads_migrate_a_database_that_was_away_at_start(pg_url, relay):
    relay.cut()
    ledger = Ledger(relay.url_for(pg_url), flush_interval_s=0.01)
    relay.restore()
    assert ledger.query() == ([], None)  # no row written yet: the read migrates (no undefined table)
    relay.cut()
    relay.restore()
    assert ledger.query() == ([], None)  # the pool replaces the connection the cut broke
    ledger.close()


def test_a_postgresql_url_without_the_extra_is_a_config_error(monkeypatch):
    import sys

    from gateway.telemetry.ledger import open_store

    monkeypatch.delitem(sys.modules, "gateway.telemetry.ledger.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails, as without the extra
    with pytest.raises(ValueError, match=r"pip install 'nudge-gateway\[postgres\]'"):
        open_store("postgresql://nudge@db:5432/nudge")
