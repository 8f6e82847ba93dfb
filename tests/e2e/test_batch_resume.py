"""A batch survives its runner: a gateway SIGKILLed mid-batch and started again resumes it (SQLite),
and with two replicas on one PostgreSQL the other replica takes it over once the dead one's claim
lapses. Either way every line is answered exactly once in the output, and no line already answered
was run again (the usage ledger has a row for each request answered)."""

from __future__ import annotations

import io
import signal
import sqlite3

import orjson
from openai import OpenAI

from tests.support import MEDIUM, GatewayProcess, backend_entry, base_config, wait_until, write_config

LINES = 60
INFLIGHT = 4  # batch.max_inflight


def _batch_file() -> io.BytesIO:
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "auto", "messages": [{"role": "user", "content": f"Count to {i}."}],
                       "max_tokens": 64, "min_tokens": 64}} for i in range(LINES)]  # fmt: skip
    return io.BytesIO(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def _start_batch(url: str) -> tuple[OpenAI, str]:
    c = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    upload = c.files.create(file=("resume.jsonl", _batch_file()), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    return c, batch.id


def _check_output(c: OpenAI, batch_id: str) -> None:
    done = wait_until(lambda: (b := c.batches.retrieve(batch_id)).status in ("completed", "failed") and b, 90,
                      what="the resumed batch to complete")  # fmt: skip
    assert done.status == "completed" and done.request_counts.completed == LINES
    ids = [orjson.loads(line)["custom_id"] for line in c.files.content(done.output_file_id).text.splitlines()]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(LINES))  # each once: none lost, none twice


def _partly_done(c: OpenAI, batch_id: str) -> bool:
    counts = c.batches.retrieve(batch_id).request_counts
    return 20 <= counts.completed < LINES - 10  # re-running the lines done would add 20 rows or more


def _sent_once(rows: int) -> None:
    """The ledger's rows of batch requests answered 2xx (a row is written as a request ends): every
    line once. A line in flight at the kill left no row and runs again; one answered in the
    milliseconds between its row and the record of its answer may run twice, at most INFLIGHT of
    them. The output could not show a line run twice: it keeps one answer per line."""
    assert rows <= LINES + INFLIGHT, f"{rows} batch answers for {LINES} lines: lines already answered ran again"


def test_a_gateway_killed_mid_batch_resumes_it_after_a_restart(sims, tmp_path):
    config = base_config(tmp_path, [backend_entry("medium", sims[MEDIUM])],
                         batch={"poll_interval_s": 0.2, "lease_s": 2, "max_inflight": INFLIGHT})  # fmt: skip
    path = write_config(tmp_path, config)
    with GatewayProcess(path) as first:
        c, batch_id = _start_batch(first.url)
        wait_until(lambda: _partly_done(c, batch_id), 60, what="the batch under way")
        first.stop(signal.SIGKILL)
    with GatewayProcess(path) as second:  # same ledger file: the claim lapses, the batch resumes
        c = OpenAI(base_url=f"{second.url}/v1", api_key="none", max_retries=0)
        _check_output(c, batch_id)
    with sqlite3.connect(tmp_path / "usage.db") as conn:  # the second gateway has stopped: all written
        _sent_once(conn.execute("SELECT count(*) FROM requests WHERE service_tier = 'batch' AND status BETWEEN 200 AND 299").fetchone()[0])


def test_another_replica_takes_over_the_batch_of_a_killed_one(sims, tmp_path, pg_url):
    config = base_config(tmp_path, [backend_entry("medium", sims[MEDIUM])], ledger={"url": pg_url},
                         batch={"poll_interval_s": 0.2, "lease_s": 2, "max_inflight": INFLIGHT})  # fmt: skip
    path = write_config(tmp_path, config)
    with GatewayProcess(path) as a, GatewayProcess(path) as b:
        c, batch_id = _start_batch(a.url)
        wait_until(lambda: _partly_done(c, batch_id), 60, what="the batch under way")
        owner = c.batches.retrieve(batch_id)
        assert owner.status == "in_progress"
        # whichever replica claimed it, kill that one; the other must finish it
        victim, survivor = (a, b) if _holder(pg_url, batch_id).endswith(f":{a.proc.pid}") else (b, a)
        victim.stop(signal.SIGKILL)
        c = OpenAI(base_url=f"{survivor.url}/v1", api_key="none", max_retries=0)
        _check_output(c, batch_id)
        assert _holder(pg_url, batch_id) in ("", None) or _holder(pg_url, batch_id).endswith(f":{survivor.proc.pid}")
    import psycopg

    with psycopg.connect(pg_url) as conn:
        _sent_once(conn.execute("SELECT count(*) FROM requests WHERE service_tier = 'batch' AND status BETWEEN 200 AND 299").fetchone()[0])


def _holder(pg_url: str, batch_id: str) -> str:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT lease_owner FROM batches WHERE id = %s", (batch_id,)).fetchone()
    return row[0] or "" if row else ""
