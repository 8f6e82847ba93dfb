"""The ledger in PostgreSQL: one ledger for every gateway replica (``ledger.url``).

psycopg 3 with a connection pool. Its synchronous API is used on purpose: every database call
already runs off the event loop (the writer thread, ``asyncio.to_thread`` for reads), so an
async driver would only add a second event loop or hand-offs back and forth.

Rows go in by COPY into a temporary table, merged into ``requests`` with the upsert's rule:
cheaper for the writer than an ``executemany`` of the upsert (``bench/ledger_throughput.py``
measures both; the README quotes it).

The writer keeps one connection of its own, opened lazily and reopened after a failure;
readers share a small pool. Every connection has a connect timeout and TCP keepalives and a
``tcp_user_timeout``, so a PostgreSQL that vanishes (a network partition, not just a refused
connection) fails the call within seconds instead of hanging the writer.

Migrations are versioned like SQLite's and run under a transaction-scoped advisory lock, so
replicas starting together apply each step exactly once; a database migrated by a newer gateway
is refused.
"""

from __future__ import annotations

import threading
from typing import Any

from gateway.telemetry.ledger import sql
from gateway.telemetry.ledger.rows import COLUMNS

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - the extra is part of the test install
    raise ImportError("ledger.url needs PostgreSQL support: pip install 'nudge-gateway[postgres]'") from exc

MIGRATIONS: list[list[str]] = [
    [  # version 1: the columns of SQLite's version 3
        """CREATE TABLE requests (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            ts DOUBLE PRECISION NOT NULL,
            key_name TEXT, team TEXT, endpoint TEXT, requested_model TEXT, routed_model TEXT, backend TEXT,
            status INTEGER, outcome TEXT, stream INTEGER,
            prompt_tokens INTEGER, completion_tokens INTEGER, reasoning_tokens INTEGER, reasoning INTEGER,
            energy_j DOUBLE PRECISION, energy_source TEXT, co2e_g DOUBLE PRECISION, usd DOUBLE PRECISION,
            latency_s DOUBLE PRECISION, ttft_s DOUBLE PRECISION, nudges TEXT, route_reason TEXT,
            adequacy DOUBLE PRECISION, policy_version TEXT, energy_final INTEGER, replica TEXT
        )""",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_key ON requests (key_name, ts)",
        "CREATE INDEX requests_team ON requests (team, ts)",
        "CREATE INDEX requests_model ON requests (routed_model, ts)",
    ],
    sql.batch_tables(real="DOUBLE PRECISION", blob="BYTEA", big="BIGINT"),  # version 2: as SQLite's version 4
    ["ALTER TABLE requests ADD COLUMN service_tier TEXT"],  # version 3: as SQLite's version 5
]
SCHEMA_VERSION = len(MIGRATIONS)
# pg_advisory_xact_lock's key: any constant the database's other users do not take ("nudge").
_MIGRATION_LOCK = 0x6E75646765
# libpq settings for every connection unless the URL sets them: fail within seconds when the
# server is gone, and bound every statement (a lock held by a VACUUM FULL or an ALTER TABLE must
# not hold the writer, nor a shutdown, for longer).
_CONNECT = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",  # ms a sent packet may stay unacknowledged
    "application_name": "nudge-gateway",
}
_WRITER_OPTIONS = "-c statement_timeout=15000 -c lock_timeout=5000 -c client_min_messages=warning"
_READER_OPTIONS = "-c statement_timeout=60000 -c lock_timeout=5000"  # reports may scan months of rows


def conninfo(url: str, options: str) -> str:
    """``url`` with the defaults above under whatever it sets itself (its own ``options`` last)."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    settings: dict[str, Any] = {k: v for k, v in _CONNECT.items() if k not in given}
    settings["options"] = f"{options} {given['options']}" if given.get("options") else options
    return psycopg.conninfo.make_conninfo(url, **settings)


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresStore:
    placeholder = "%s"
    shared = True  # every replica's rows
    # away, or a primary demoted to a read-only standby during a failover
    retryable: tuple[type[Exception], ...] = (
        psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction,
    )  # fmt: skip
    errors: tuple[type[Exception], ...] = (psycopg.Error,)
    same_as = "IS NOT DISTINCT FROM"

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.path = redact(url)  # what logs and errors name
        self._writer_conninfo = conninfo(url, _WRITER_OPTIONS)
        self._writer: psycopg.Connection[Any] | None = None
        self._writer_lock = threading.Lock()
        self._pool: ConnectionPool[Any] = ConnectionPool(
            conninfo(url, _READER_OPTIONS), min_size=0, max_size=pool_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            check=ConnectionPool.check_connection,  # a connection broken by a blip is replaced, not handed out
            open=True, timeout=5.0, name="nudge-ledger-readers",
        )  # fmt: skip

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._writer_conninfo)

    def migrate(self) -> None:
        with self._connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            sql.migrate(conn.execute, MIGRATIONS, "%s", self.path)

    def insert(self, values: list[list[Any]]) -> None:
        """One transaction: the batch is copied (COPY, the cheapest way in for both sides) into a
        temporary table and merged from there with the upsert's rule. On a connection failure the
        connection is dropped, the error raised and the caller retries with a new one."""
        with self._writer_lock:
            conn = self._writer
            if conn is None or conn.closed:
                conn = self._writer = self._connect()
                conn.autocommit = True  # each batch is its own transaction (conn.transaction() below)
            try:
                with conn.transaction(), conn.cursor() as cur:
                    # in the transaction, so that behind a transaction-mode pooler (PgBouncer) the
                    # table exists on whichever server connection this one is
                    cur.execute(_STAGING)
                    with cur.copy(_COPY) as copy:
                        for row in _last_per_request(values):
                            copy.write_row(row)
                    cur.execute(_MERGE)
            except self.errors:
                self._drop_writer()  # whatever went wrong, the next batch starts on a clean connection
                raise

    def _drop_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except psycopg.Error:
                pass
            self._writer = None

    def fetch(self, statement: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return conn.execute(statement, args).fetchall()

    def execute(self, statement: str, args: list[Any]) -> int:
        with self._pool.connection() as conn:
            return conn.execute(statement, args).rowcount

    def close(self) -> None:
        with self._writer_lock:
            self._drop_writer()
        self._pool.close()


def _last_per_request(values: list[list[Any]]) -> list[list[Any]]:
    """One row per request id, the one the upsert would keep: a merge may touch a row only once,
    and a request's provisional and final rows can share a batch."""
    kept: dict[Any, list[Any]] = {}
    for row in values:
        old = kept.get(row[0])
        if old is None or row[_FINAL] == 1 or old[_FINAL] == 0:
            kept[row[0]] = row
    return values if len(kept) == len(values) else list(kept.values())


_FINAL = COLUMNS.index("energy_final")
_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS ledger_batch ON COMMIT DELETE ROWS AS SELECT {', '.join(COLUMNS)} "
    "FROM requests WITH NO DATA"
)
_COPY = f"COPY ledger_batch ({', '.join(COLUMNS)}) FROM STDIN"
_MERGE = sql.upsert_from("ledger_batch")
