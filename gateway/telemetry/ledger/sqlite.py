"""The ledger in one SQLite file: the embedded default, for one gateway process.

WAL mode (readers never block the writer), ``synchronous=NORMAL`` (a crash of the process
loses nothing committed; a power cut may lose the last transactions, never corrupt the file).
The file is created readable by its owner only: it says who asked what, by key and team.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from typing import Any

from gateway.telemetry.ledger import sql

MIGRATIONS: list[list[str]] = [
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
    [  # version 3: which gateway process wrote the row
        "ALTER TABLE requests ADD COLUMN replica TEXT",
    ],
    sql.batch_tables(real="REAL", blob="BLOB", big="INTEGER"),  # version 4: the Batch API's (ledger/jobs.py)
    [  # version 5: the tier a request was served on (default, flex, batch)
        "ALTER TABLE requests ADD COLUMN service_tier TEXT",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
_memory_ids = itertools.count()


class SqliteStore:
    placeholder = "?"
    shared = False  # one process's rows
    retryable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)  # locked, disk trouble
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    same_as = "IS"

    def __init__(self, path: str) -> None:
        self.path = path
        if path == ":memory:":  # keeps nothing, but readers on other threads must see the rows
            self._target, self._uri = f"file:nudge-ledger-{next(_memory_ids)}?mode=memory&cache=shared", True
        else:
            self._target, self._uri = path, False
            # SQLite gives its -wal and -shm files the database's permissions.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._keeper = self._connect()  # also keeps a memory database alive
        self._writer: sqlite3.Connection | None = None
        self._writer_thread: int | None = None
        self._lock = threading.Lock()

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, uri=self._uri, timeout=10.0, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if not self._uri:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def migrate(self) -> None:
        conn = self._keeper
        with conn:
            sql.migrate(conn.execute, MIGRATIONS, "?", self.path)

    def insert(self, values: list[list[Any]]) -> None:
        """One transaction; from the writer thread (its own connection) or, after close, any thread."""
        me = threading.get_ident()
        if self._writer_thread == me and self._writer is not None:
            conn, own = self._writer, False
        elif self._writer_thread is None:
            self._writer, self._writer_thread = self._connect(), me
            conn, own = self._writer, False
        else:
            conn, own = self._connect(), True
        try:
            with conn:
                conn.executemany(_UPSERT, values)
        finally:
            if own:
                conn.close()

    def fetch(self, statement: str, args: list[Any]) -> list[dict[str, Any]]:
        conn = self._connect(readonly=True)
        try:
            return [dict(r) for r in conn.execute(statement, args).fetchall()]
        finally:
            conn.close()

    def execute(self, statement: str, args: list[Any]) -> int:
        """A write outside the row stream (pruning); the number of rows it touched."""
        with self._lock:
            conn = self._connect()
            try:
                with conn:
                    return conn.execute(statement, args).rowcount
            finally:
                conn.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._uri:  # a memory database lives as long as a connection to it: readable after close
            self._keeper.close()


_UPSERT = sql.upsert("?")
