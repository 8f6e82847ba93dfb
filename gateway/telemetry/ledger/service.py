"""The usage ledger: one row per request, written off the hot path into SQLite or PostgreSQL.

Rows are written by one writer thread in batches: a batch is committed ``flush_interval_s``
after its first row (or as soon as it holds ``batch_size`` rows), one transaction per batch, so
a process killed outright loses at most that long of rows; with nothing queued the writer
sleeps. A request id written twice keeps the last row (upsert), except that a provisional row
(energy not final yet) never replaces a final one.

**When the database is away.** ``write`` never blocks, on an event loop or anywhere else.
Rows wait in memory while the writer retries (backing off to every few seconds), and are
written, oldest first, once the database answers again. At most ``max_buffered`` rows wait;
beyond that a row is dropped, counted in ``dropped`` (``gateway_ledger_rows_dropped_total``) and
logged: a bound on memory is worth more than one more row once the database has been gone
that long. ``close()`` writes what waits, giving up (counted and logged too) after
``close_timeout_s`` if the database is still away. A database unreachable when the gateway
starts is migrated by the writer once it answers; the gateway serves meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any, Protocol

from gateway.telemetry.ledger import rows as _rows
from gateway.telemetry.ledger import sql
from gateway.telemetry.ledger.rows import COLUMNS, from_record, to_values

log = logging.getLogger("gateway.ledger")

# How much nicer (OS priority) the writer thread is than the process: its database work runs
# partly without the GIL, so on a busy core it competes with the event loop for the CPU; the
# loop should win, but not so completely that rows wait in memory under load (at nice 10 a
# kill -9 at 2,500 req/s on 2 cores lost up to 1.3% of answered rows with SQLite; at 5, 0.1-0.5%).
WRITER_NICE = 5
_LOG_EVERY_S = 10.0  # the longest a failing database or dropped rows go without a log line
_IDLE_WAIT_S = 0.25  # the longest a row can wait for an idle writer to notice it
_CALL_BOUND_S = 25.0  # how long one database call may take at most (connect + statement timeout)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}" if str(exc).strip() else type(exc).__name__


class LedgerUnavailable(Exception):
    """A read found the database away (the API answers 503, the CLI says so)."""


class Store(Protocol):
    """Where rows live: ``SqliteStore`` or ``PostgresStore``."""

    path: str
    placeholder: str
    shared: bool  # other processes' rows are here too
    retryable: tuple[type[Exception], ...]  # the database is away or busy: try again later
    errors: tuple[type[Exception], ...]  # any error of the database (a row it refuses, say)
    same_as: str  # equality that holds for two NULLs too ("IS" in SQLite)

    def migrate(self) -> None: ...
    def insert(self, values: list[list[Any]]) -> None: ...
    def fetch(self, statement: str, args: list[Any]) -> list[dict[str, Any]]: ...
    def execute(self, statement: str, args: list[Any]) -> int: ...
    def close(self) -> None: ...


def open_store(target: str, pool_size: int = 4) -> Store:
    """A PostgreSQL store for a ``postgresql://`` URL, else a SQLite file (or ``:memory:``)."""
    if target.startswith(("postgresql://", "postgres://")):
        try:
            from gateway.telemetry.ledger.postgres import PostgresStore
        except ImportError as exc:  # the postgres extra is not installed: a config error, said plainly
            raise ValueError(str(exc)) from None
        return PostgresStore(target, pool_size)
    from gateway.telemetry.ledger.sqlite import SqliteStore

    return SqliteStore(target)


class Ledger:
    row_from_context = staticmethod(_rows.row_from_context)

    def __init__(
        self,
        target: str | Store,
        batch_size: int = 256,
        flush_interval_s: float = 0.02,
        *,
        max_buffered: int = 131072,
        close_timeout_s: float = 10.0,
        pool_size: int = 4,
        replica: str | None = None,
    ) -> None:
        self.store = open_store(target, pool_size) if isinstance(target, str) else target
        self.path = self.store.path
        self.shared = self.store.shared
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.close_timeout_s = close_timeout_s
        # Which gateway process wrote a row: the pod's name in Kubernetes, plus the process id.
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.dropped = 0  # rows given up: the buffer was full, or the database still away at close
        self.written = 0
        self.write_errors = 0  # failed attempts to write a batch (each retried)
        p = self.store.placeholder
        self._sql_prune = sql.prune(p)
        self._sql_recent = sql.recent(p)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self.unreachable: str | None = None  # why the database could not be reached at start
        try:
            self.store.migrate()
            self._migrated = True
        except self.store.retryable as exc:  # away at start: the writer migrates once it answers
            self.unreachable = _reason(exc)
            log.error("usage ledger %s unreachable at start (%s); rows wait in memory until it answers",
                      self.path, self.unreachable)  # fmt: skip
        # Rows wait in a deque: appending is one atomic operation, and the writer thread is
        # woken only when a batch is full (or by its flush interval), not once per row: every
        # wake-up of a Python thread is a GIL hand-off the event loop may have to wait for.
        self._rows: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._closing = False  # close() asked the writer to finish
        self._closed = False
        self._count_lock = threading.Lock()
        self._accepted = 0
        self._last_drop_log = 0.0
        self._drops_unlogged = 0
        self._thread = threading.Thread(target=self._writer, name="ledger-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ writing

    def write(self, row: dict[str, Any]) -> None:
        """Queue a row; thread-safe, never blocks while the ledger is open (see the module doc
        when the database is away). After ``close`` it is written on the caller's thread."""
        if self._closed:  # shut down: the writer is gone, write it here
            with self._count_lock:
                self._accepted += 1
            self._write_now([row])
            return
        rows = self._rows
        if len(rows) >= self.max_buffered:
            self._drop(1, f"the buffer is full (last request {row.get('request_id')})")
            return
        with self._count_lock:
            self._accepted += 1
        rows.append(row)
        n = len(rows)
        if (n == 1 or n >= self.batch_size) and not self._wake.is_set():  # set() takes a lock
            self._wake.set()  # the first row of a batch starts its clock; a full one goes now

    def _drop(self, n: int, why: str, accepted: bool = False) -> None:
        """Count ``n`` rows given up and log it (at once the first time, then every 10 s)."""
        with self._count_lock:
            if accepted:
                self._accepted -= n
            self.dropped += n
            self._drops_unlogged += n
            now = time.monotonic()
            if now - self._last_drop_log < _LOG_EVERY_S:
                return
            self._last_drop_log, count, self._drops_unlogged = now, self._drops_unlogged, 0
        log.error("usage ledger %s: %d row(s) dropped: %s; %d dropped in all, %d waiting",
                  self.path, count, why, self.dropped, self.pending)  # fmt: skip

    @property
    def pending(self) -> int:
        """Rows accepted and not written yet."""
        return self._accepted - self.written

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row accepted so far is written (or given up); False on timeout."""
        target = self._accepted
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.written < min(target, self._accepted):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Write everything still queued (for at most ``close_timeout_s``), then stop the writer.
        Never raises; blocking: call it off the event loop."""
        if self._closed:
            return
        self._close_deadline = time.monotonic() + self.close_timeout_s
        self._closing = True
        self._wake.set()
        # the writer gives up at the deadline, or once a call in flight fails (the stores bound
        # every call: PostgreSQL's statement and lock timeouts); past that, stop waiting for it
        self._thread.join(self.close_timeout_s + _CALL_BOUND_S)
        self._closed = True
        if self._thread.is_alive():
            self._drop(self.pending, "the writer is stuck in a database call at shutdown", accepted=True)
            return
        late = self._drain()  # rows written while the writer finished
        if late:
            self._write_now(late)
        self.store.close()

    def _writer(self) -> None:
        try:  # Linux: a thread is a task with its own nice value
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE))
        except (AttributeError, OSError):  # elsewhere, or not allowed: keep the default priority
            pass
        while True:
            batch, closing = self._collect()
            try:
                for i in range(0, len(batch), self.batch_size):
                    chunk = batch[i : i + self.batch_size]
                    left = self._insert([to_values(row, self.replica) for row in chunk])
                    if left:
                        rest = left + len(batch) - i - len(chunk) + len(self._drain())
                        self._drop(rest, "the database is still unreachable at shutdown", accepted=True)
                        return
            except Exception:  # a bug must not end the writer: every later row would wait forever
                log.exception("usage ledger %s: the writer failed on a batch of %d row(s)", self.path, len(batch))
                self._drop(len(batch), "the writer failed on them", accepted=True)
            if closing:
                return

    def _collect(self) -> tuple[list[dict[str, Any]], bool]:
        """The next batch: queued rows until it is full or the interval is up (all of them on close)."""
        rows = self._rows
        while not rows and not self._closing:
            # Sleep until the first row; bounded, because two threads appending at once may both
            # see two rows and neither wake the writer. Idle and unmigrated: try the database.
            self._wake.wait(_IDLE_WAIT_S)
            self._wake.clear()
            if not self._migrated and not rows:
                self._migration_failure()
        deadline = time.monotonic() + self.flush_interval_s  # from the batch's first row
        while len(rows) < self.batch_size and not self._closing:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            self._wake.wait(timeout)
            self._wake.clear()
        if self._closing:
            return self._drain(), True
        batch: list[dict[str, Any]] = []
        while rows and len(batch) < self.batch_size:
            batch.append(rows.popleft())
        return batch, False

    def _drain(self) -> list[dict[str, Any]]:
        rest: list[dict[str, Any]] = []
        rows = self._rows
        while rows:
            rest.append(rows.popleft())
        return rest

    def _migration_failure(self) -> Exception | None:
        """Migrate if not done yet; the error while the database is away or refuses, else None."""
        with self._migrate_lock:
            if self._migrated:
                return None
            try:
                self.store.migrate()
            except self.store.errors as exc:
                self.unreachable = _reason(exc)
                return exc
            self._migrated = True
            self.unreachable = None
        log.info("usage ledger %s reachable and migrated", self.path)
        return None

    def _insert(self, values: list[list[Any]]) -> int:
        """Write rows, retrying while the database is away; how many are left unwritten (closing
        and out of time), 0 when done.

        A batch the database refuses for what is in it (a value it cannot store) is split in
        halves until the rows at fault are found: those are dropped, counted and logged, and the
        rest is written."""
        delay, last_log = 0.05, 0.0
        while True:
            failure = self._migration_failure() if not self._migrated else None
            if failure is not None:  # away, or e.g. no right to create the table: retried too
                problem = _reason(failure)
            else:
                try:
                    self.store.insert(values)
                    self.written += len(values)
                    return 0
                except self.store.retryable as exc:  # locked, disk trouble, database away: keep the rows
                    problem = _reason(exc)
                except self.store.errors as exc:
                    if len(values) == 1:
                        self._drop(1, f"the database refused the row of request {values[0][0]} ({_reason(exc)})",
                                   accepted=True)  # fmt: skip
                        return 0
                    half = len(values) // 2
                    left = self._insert(values[:half])
                    return left + len(values) - half if left else self._insert(values[half:])
            self.write_errors += 1
            now = time.monotonic()
            if now - last_log >= _LOG_EVERY_S:
                last_log = now
                log.error("usage ledger %s write failed (%s); %d row(s) waiting, retrying",
                          self.path, problem, self.pending)  # fmt: skip
            if self._closing and time.monotonic() + delay > self._close_deadline:
                return len(values)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _write_now(self, batch: list[dict[str, Any]]) -> None:
        """After close: write on the calling thread (one attempt; a failure is counted, never raised)."""
        values = [to_values(row, self.replica) for row in batch]
        try:
            self.store.insert(values)
            with self._count_lock:
                self.written += len(values)
        except self.store.errors as exc:
            self._drop(len(values), f"written after shutdown and refused ({_reason(exc)})", accepted=True)
        finally:
            self.store.close()  # the connection this write opened

    # ------------------------------------------------------------------ reading

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
        p = self.store.placeholder
        where, args = sql.where(p, key, team, model, since, until)
        if cursor is not None:
            args.append(int(cursor))
        fetched = self._fetch(sql.page(p, where, cursor is not None), [*args, limit + 1])
        more = len(fetched) > limit
        page = [from_record(r) for r in fetched[:limit]]
        return page, (str(fetched[limit - 1]["id"]) if more and limit > 0 else None)

    def totals(
        self,
        key: str | None = None,
        team: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        by: str = "model",
    ) -> list[dict[str, Any]]:
        """Sums per model, key, team, backend or replica, largest energy first."""
        where, args = sql.where(self.store.placeholder, key, team, model, since, until)
        result = self._fetch(sql.totals(where, by), args)
        return [{by: r["grp"], **{k: v for k, v in r.items() if k != "grp"}} for r in result]

    def recent(self, team: str, window: int, since: float) -> list[tuple[str, float]]:
        """A team's last ``window`` answered requests since a time, oldest first: (key, joules),
        every replica's (social proof compares a key with its whole team)."""
        found = self._fetch(self._sql_recent, [team, float(since), int(window)])
        return [(r["key_name"] or "anonymous", float(r["energy_j"])) for r in reversed(found)]

    def _fetch(self, statement: str, args: list[Any]) -> list[dict[str, Any]]:
        try:
            failure = self._migration_failure() if not self._migrated else None
            if failure is not None:
                raise LedgerUnavailable(f"the usage ledger ({self.path}) is unreachable: {_reason(failure)}")
            return self.store.fetch(statement, args)
        except self.store.retryable as exc:
            raise LedgerUnavailable(f"the usage ledger ({self.path}) is unreachable: {_reason(exc)}") from exc

    def prune(self, before: float, slice_rows: int = 10000) -> int:
        """Delete the rows of requests that arrived before ``before`` (unix seconds), a slice at a
        time; the number deleted."""
        deleted = 0
        while True:
            n = self.store.execute(self._sql_prune, [float(before), slice_rows])
            deleted += n
            if n < slice_rows:
                return deleted


__all__ = ["COLUMNS", "Ledger", "LedgerUnavailable", "Store", "open_store"]
