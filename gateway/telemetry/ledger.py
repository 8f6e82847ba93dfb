"""The usage ledger: one SQLite row per request, written off the hot path.

One file in WAL mode (readers never block the writer), ``synchronous=NORMAL`` (a crash of the
process loses nothing committed; a power cut may lose the last transactions, never corrupt the
file). Rows are written by one writer thread in batches: a batch is committed ``flush_interval_s``
after its first row (or as soon as it holds ``batch_size`` rows), one transaction per batch, so a
process killed outright loses at most that long of rows; with nothing queued the writer sleeps.
A request id written twice keeps the last row (upsert), except that a provisional row (energy
not final yet) never replaces a final one.

**When the queue is full.** The queue holds ``max_queue`` rows (~64 k, tens of MB). It only
fills when the disk has stalled for a long time under load. Then ``write`` still never blocks
an event loop and still loses nothing as long as memory allows:

* called from a plain thread (the energy samplers call ``on_final`` → ``write`` from theirs),
  it waits for room: back-pressure on a background thread, which only delays its next tick;
* called from a thread running an asyncio loop, it never waits: the row goes to an overflow
  list the writer empties first. Past ``max_overflow`` rows (another ~64 k) the row is dropped,
  counted in ``dropped`` and logged as an error: a bound on memory is worth more than one
  more row once the disk has been gone that long.

``close()`` writes everything queued (overflow included) before returning; a row written after
``close`` is written synchronously. The schema is versioned (table ``schema_version``);
``_MIGRATIONS`` lists the steps, so later columns are one ``ALTER TABLE`` away.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.context import RequestContext

log = logging.getLogger("gateway.ledger")

COLUMNS = (
    "request_id", "ts", "key_name", "team", "endpoint", "requested_model", "routed_model", "backend",
    "status", "outcome", "stream", "prompt_tokens", "completion_tokens", "reasoning_tokens", "reasoning",
    "energy_j", "energy_source", "co2e_g", "usd", "latency_s", "ttft_s", "nudges", "route_reason",
    "adequacy", "policy_version", "energy_final",
)  # fmt: skip

_MIGRATIONS: list[list[str]] = [
    [  # version 1
        """CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            ts REAL NOT NULL,
            key_name TEXT, team TEXT, endpoint TEXT, requested_model TEXT, routed_model TEXT, backend TEXT,
            status INTEGER, outcome TEXT, stream INTEGER,
            prompt_tokens INTEGER, completion_tokens INTEGER, reasoning_tokens INTEGER, reasoning INTEGER,
            energy_j REAL, energy_source TEXT, co2e_g REAL, usd REAL,
            latency_s REAL, ttft_s REAL, nudges TEXT, route_reason TEXT, adequacy REAL, policy_version TEXT
        )""",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_key ON requests (key_name, ts)",
        "CREATE INDEX requests_team ON requests (team, ts)",
        "CREATE INDEX requests_model ON requests (routed_model, ts)",
    ],
    [  # version 2: a row is written when its request ends and again when its energy is final
        "ALTER TABLE requests ADD COLUMN energy_final INTEGER",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)

CLIENT_TEXT_MAX = 256  # characters kept of a string the client chose (the model it asked for)
GROUPS = {"model": "routed_model", "key": "key_name", "team": "team", "backend": "backend"}

_INSERT = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT(request_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])} "
    # a provisional row never replaces a final one (the two are written from different threads)
    "WHERE excluded.energy_final = 1 OR requests.energy_final = 0"
)
# How much nicer (OS priority) the writer thread is than the process: its SQLite work runs
# without the GIL, so on a busy core it competes with the event loop for the CPU; the loop
# should win, but not so completely that rows wait in memory under load (at nice 10 a kill -9
# at 2,500 req/s on 2 cores lost up to 1.3% of answered rows; at 5, 0.1-0.5%).
WRITER_NICE = 5
_memory_ids = itertools.count()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Ledger:
    def __init__(
        self,
        path: str,
        batch_size: int = 256,
        flush_interval_s: float = 0.02,
        *,
        max_queue: int = 65536,
        max_overflow: int = 65536,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_overflow = max_overflow
        self.dropped = 0
        self.written = 0
        if path == ":memory:":  # keeps nothing, but readers on other threads must see the rows
            self._target, self._uri = f"file:nudge-ledger-{next(_memory_ids)}?mode=memory&cache=shared", True
        else:
            self._target, self._uri = path, False
            # Who asked what, by key and team: readable by the gateway's user only. SQLite gives
            # its -wal and -shm files the database's permissions.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._keeper = self._connect()  # also keeps a memory database alive
        self._migrate(self._keeper)
        self.max_queue = max_queue
        # Rows wait in a deque: appending is one atomic operation, and the writer thread is
        # woken only when a batch is full (or by its flush interval), not once per row: every
        # wake-up of a Python thread is a GIL hand-off the event loop may have to wait for.
        self._rows: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._room = threading.Condition(threading.Lock())  # back-pressure: plain threads wait here
        self._overflow: deque[dict[str, Any]] = deque()
        self._overflow_lock = threading.Lock()
        self._closing = False  # close() asked the writer to finish
        self._closed = False
        self._count_lock = threading.Lock()
        self._accepted = 0
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ setup

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, uri=self._uri, timeout=10.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if not self._uri:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has ledger schema {version}, newer than this gateway's {SCHEMA_VERSION}"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    # ------------------------------------------------------------------ writing

    @staticmethod
    def row_from_context(ctx: RequestContext, final: bool = True) -> dict[str, Any]:
        """The row of a request. ``final``: its energy will not change (False: a provisional row,
        written when the request ends, which the final one replaces)."""
        usage = ctx.usage if isinstance(ctx.usage, dict) else {}
        details = usage.get("completion_tokens_details") or {}
        reasoning_tokens = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if not isinstance(reasoning_tokens, int):
            reasoning_tokens = ctx.reasoning_tokens
        energy = ctx.energy
        return {
            "request_id": ctx.request_id,
            "ts": ctx.received_wall,
            "key_name": ctx.key_name,
            "team": ctx.team,
            "endpoint": ctx.api or ctx.endpoint,
            "requested_model": ctx.requested_model[:CLIENT_TEXT_MAX] or None,  # the client's words: bounded
            "routed_model": ctx.model or None,
            "backend": ctx.backend,
            "status": ctx.status,
            "outcome": ctx.outcome,
            "stream": int(ctx.stream),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "reasoning_tokens": reasoning_tokens,
            "reasoning": int(bool(ctx.reasoning or reasoning_tokens)),
            "energy_j": energy.joules if energy is not None else None,
            "energy_source": energy.source if energy is not None else None,
            "co2e_g": energy.co2e_g if energy is not None else None,
            "usd": energy.usd if energy is not None else None,
            "latency_s": ctx.latency_s,
            "ttft_s": ctx.first_byte - ctx.received if ctx.first_byte is not None else None,
            "nudges": [n.id for n in ctx.nudges],
            "route_reason": ctx.route_reason or None,
            "adequacy": ctx.adequacy,
            "policy_version": ctx.policy_version,
            "energy_final": int(final),
        }

    def write(self, row: dict[str, Any]) -> None:
        """Queue a row; thread-safe, never blocks an event loop (see the module doc when full)."""
        with self._count_lock:
            self._accepted += 1
        if self._closed:  # shutting down: the writer is gone, write it here
            self._insert([row])
            return
        rows = self._rows
        if len(rows) < self.max_queue:
            rows.append(row)
            n = len(rows)
            if (n == 1 or n >= self.batch_size) and not self._wake.is_set():  # set() takes a lock
                self._wake.set()  # the first row of a batch starts its clock; a full one goes now
            return
        if not _on_event_loop():  # back-pressure on a background thread
            with self._room:
                while len(rows) >= self.max_queue and not self._closing:
                    self._room.wait(0.05)
            if self._closed:
                self._insert([row])
            else:
                rows.append(row)
                self._wake.set()
            return
        with self._overflow_lock:
            if len(self._overflow) < self.max_overflow:
                self._overflow.append(row)
                return
            self.dropped += 1
        with self._count_lock:
            self._accepted -= 1
        log.error("usage ledger is %d rows behind; dropped the row of request %s", self.pending, row.get("request_id"))

    @property
    def pending(self) -> int:
        """Rows accepted and not written yet."""
        return self._accepted - self.written

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row accepted so far is written; False on timeout."""
        target = self._accepted
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.written < target:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Write everything still queued, then stop the writer."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._closed = True
        late = self._drain_all()  # rows a waiting thread added while the writer finished
        if late:
            self._insert(late)
        if not self._uri:  # a memory database lives as long as a connection to it
            self._keeper.close()

    def _writer(self) -> None:
        try:  # Linux: a thread is a task with its own nice value
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE))
        except (AttributeError, OSError):  # elsewhere, or not allowed: keep the default priority
            pass
        conn = self._connect()
        try:
            while True:
                batch, closing = self._collect()
                if batch:
                    self._insert(batch, conn)
                if closing:
                    return
        finally:
            conn.close()

    def _collect(self) -> tuple[list[dict[str, Any]], bool]:
        """The next batch: overflow first, then queued rows until it is full or the interval is up."""
        with self._overflow_lock:
            batch = [self._overflow.popleft() for _ in range(min(self.batch_size, len(self._overflow)))]
        rows = self._rows
        if not batch and not rows and not self._closing:
            self._wake.wait()  # nothing queued: sleep until the first row (write() wakes this)
            self._wake.clear()
        deadline = time.monotonic() + self.flush_interval_s  # from the batch's first row
        while len(batch) + len(rows) < self.batch_size and not self._closing:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            self._wake.wait(timeout)
            self._wake.clear()
        if self._closing:
            return batch + self._drain_all(), True
        while rows and len(batch) < self.batch_size:
            batch.append(rows.popleft())
        self._made_room()
        return batch, False

    def _made_room(self) -> None:
        with self._room:
            self._room.notify_all()

    def _drain_all(self) -> list[dict[str, Any]]:
        rest: list[dict[str, Any]] = []
        rows = self._rows
        while rows:
            rest.append(rows.popleft())
        with self._overflow_lock:
            rest.extend(self._overflow)
            self._overflow.clear()
        self._made_room()
        return rest

    def _insert(self, rows: list[dict[str, Any]], conn: sqlite3.Connection | None = None) -> None:
        values = [_values(row) for row in rows]
        own = conn is None
        conn = conn or self._connect()
        delay = 0.05
        try:
            while True:
                try:
                    with conn:
                        conn.executemany(_INSERT, values)
                    self.written += len(values)
                    return
                except sqlite3.OperationalError as exc:  # locked or disk trouble: keep the rows, retry
                    log.error("usage ledger write failed (%s); retrying in %.1f s", exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            if own:
                conn.close()

    # ------------------------------------------------------------------ reading

    def _where(self, key, team, model, since, until) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if key is not None:
            clauses.append("key_name = ?")
            args.append(key)
        if team is not None:
            clauses.append("team = ?")
            args.append(team)
        if model is not None:
            clauses.append("(routed_model = ? OR requested_model = ?)")
            args += [model, model]
        if since is not None:
            clauses.append("ts >= ?")
            args.append(float(since))
        if until is not None:
            clauses.append("ts < ?")
            args.append(float(until))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(
        self,
        key: str | None = None,
        team: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Rows newest first (by write order), at most ``limit``; the cursor for the next page or None."""
        where, args = self._where(key, team, model, since, until)
        if cursor is not None:
            where += (" AND " if where else " WHERE ") + "id < ?"
            args.append(int(cursor))
        sql = f"SELECT id, {', '.join(COLUMNS)} FROM requests{where} ORDER BY id DESC LIMIT ?"
        conn = self._connect(readonly=True)
        try:
            fetched = conn.execute(sql, [*args, limit + 1]).fetchall()
        finally:
            conn.close()
        more = len(fetched) > limit
        rows = [_row(r) for r in fetched[:limit]]
        return rows, (str(fetched[limit - 1]["id"]) if more and limit > 0 else None)

    def totals(
        self,
        key: str | None = None,
        team: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        by: str = "model",
    ) -> list[dict[str, Any]]:
        """Sums per model, key, team or backend, largest energy first."""
        column = GROUPS[by]
        where, args = self._where(key, team, model, since, until)
        sql = (
            f"SELECT {column} AS grp, COUNT(*) AS requests, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(energy_j), 0) AS energy_j, COALESCE(SUM(co2e_g), 0) AS co2e_g, SUM(usd) AS usd, "
            "SUM(energy_source = 'estimated') AS estimated, SUM(reasoning) AS reasoning "
            f"FROM requests{where} GROUP BY {column} ORDER BY energy_j DESC"
        )
        conn = self._connect(readonly=True)
        try:
            result = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
        return [{by: r["grp"], **{k: r[k] for k in r.keys() if k != "grp"}} for r in result]  # noqa: SIM118 - Row iterates values


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str, now: float | None = None) -> float:
    """Unix seconds, ISO 8601 (UTC unless a zone is given) or a duration ago ('30m', '24h', '7d')."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if len(text) > 1 and text[-1].lower() in _DURATION and text[:-1].replace(".", "", 1).isdigit():
        return (time.time() if now is None else now) - float(text[:-1]) * _DURATION[text[-1].lower()]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not unix seconds, an ISO 8601 time or a duration like 24h") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_NUDGES = COLUMNS.index("nudges")
_TS = COLUMNS.index("ts")
_FINAL = COLUMNS.index("energy_final")


def _values(row: dict[str, Any]) -> list[Any]:
    """One row's values in column order (what ``_value`` gives, column by column)."""
    get = row.get
    values = [get(c) for c in COLUMNS]
    values[_NUDGES] = orjson.dumps(values[_NUDGES] or []).decode()
    if values[_TS] is None:
        values[_TS] = time.time()
    if values[_FINAL] is None:
        values[_FINAL] = 1  # a row is final unless it says otherwise
    return values


def _value(row: dict[str, Any], column: str) -> Any:
    value = row.get(column)
    if column == "nudges":
        return orjson.dumps(value or []).decode()
    if column == "ts" and value is None:
        return time.time()
    return value


def _row(r: sqlite3.Row) -> dict[str, Any]:
    out = {c: r[c] for c in COLUMNS}
    out["nudges"] = orjson.loads(out["nudges"]) if out["nudges"] else []
    out["stream"] = bool(out["stream"])
    out["reasoning"] = bool(out["reasoning"])
    return out
