"""The ledger's statements, written once for SQLite and PostgreSQL (``p`` is the placeholder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.telemetry.ledger.rows import COLUMNS, GROUPS


def batch_tables(real: str, blob: str, big: str) -> list[str]:
    """The Batch API's tables (``jobs.py``) in a dialect: its names for a double, a byte string and
    a 64-bit integer (SQLite's version 4, PostgreSQL's version 2)."""
    times = ", ".join(f"{c} {real}" for c in (
        "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at"))
    return [
        f"""CREATE TABLE files (
            id TEXT PRIMARY KEY, purpose TEXT NOT NULL, filename TEXT, bytes {big} NOT NULL,
            created_at {real} NOT NULL, expires_at {real}, owner TEXT, team TEXT, batch_id TEXT, kind TEXT NOT NULL,
            data {blob}
        )""",
        "CREATE INDEX files_owner ON files (owner, created_at)",
        f"""CREATE TABLE batches (
            id TEXT PRIMARY KEY, created_at {real} NOT NULL, status TEXT NOT NULL, endpoint TEXT NOT NULL,
            input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, expires_at {real} NOT NULL, {times},
            output_file_id TEXT, error_file_id TEXT, total INTEGER NOT NULL, errors TEXT, metadata TEXT, owner TEXT,
            key_name TEXT, team TEXT, section TEXT, lease_owner TEXT, lease_until {real}
        )""",
        "CREATE INDEX batches_owner ON batches (owner, created_at)",
        "CREATE INDEX batches_status ON batches (status)",
        """CREATE TABLE batch_results (
            batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, status_code INTEGER,
            request_id TEXT, body TEXT, error TEXT, PRIMARY KEY (batch_id, line)
        )""",
    ]  # fmt: skip


def upsert(p: str) -> str:
    """Insert a row; a request id written twice keeps the last row, except that a provisional
    row never replaces a final one (the two are written from different threads, and with
    several replicas, only ever by the replica that served the request)."""
    return (
        f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join([p] * len(COLUMNS))}) "
        f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])} "
        "WHERE excluded.energy_final = 1 OR requests.energy_final = 0"
    )


def upsert_from(table: str) -> str:
    """``upsert`` for the rows of another table (one row per request id in it)."""
    columns = ", ".join(COLUMNS)
    return (
        f"INSERT INTO requests ({columns}) SELECT {columns} FROM {table} "
        f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])} "
        "WHERE excluded.energy_final = 1 OR requests.energy_final = 0"
    )


def where(
    p: str, key: str | None, team: str | None, model: str | None, since: float | None, until: float | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if key is not None:
        clauses.append(f"key_name = {p}")
        args.append(key)
    if team is not None:
        clauses.append(f"team = {p}")
        args.append(team)
    if model is not None:
        clauses.append(f"(routed_model = {p} OR requested_model = {p})")
        args += [model, model]
    if since is not None:
        clauses.append(f"ts >= {p}")
        args.append(float(since))
    if until is not None:
        clauses.append(f"ts < {p}")
        args.append(float(until))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def page(p: str, where_sql: str, cursor: bool) -> str:
    """Rows newest first by write order (the row id), one more than the page to know if more follow."""
    if cursor:
        where_sql += (" AND " if where_sql else " WHERE ") + f"id < {p}"
    return f"SELECT id, {', '.join(COLUMNS)} FROM requests{where_sql} ORDER BY id DESC LIMIT {p}"


def totals(where_sql: str, by: str) -> str:
    column = GROUPS[by]
    return (
        f"SELECT {column} AS grp, COUNT(*) AS requests, "
        "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
        "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
        "COALESCE(SUM(energy_j), 0) AS energy_j, COALESCE(SUM(co2e_g), 0) AS co2e_g, SUM(usd) AS usd, "
        "SUM(CASE WHEN energy_source = 'estimated' THEN 1 ELSE 0 END) AS estimated, SUM(reasoning) AS reasoning "
        f"FROM requests{where_sql} GROUP BY {column} ORDER BY energy_j DESC"
    )


def recent(p: str) -> str:
    """A team's last answered requests since a time, newest first: (key, energy). The (team, ts)
    index serves it reading about as many rows as it returns."""
    return (
        "SELECT key_name, energy_j FROM requests "
        f"WHERE team = {p} AND ts >= {p} AND status = 200 AND energy_j IS NOT NULL ORDER BY ts DESC LIMIT {p}"
    )


def prune(p: str) -> str:
    """Delete one slice of rows older than a time (a long DELETE would hold its locks as long)."""
    return f"DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < {p} ORDER BY id LIMIT {p})"


def migrate(execute: Callable[..., Any], migrations: list[list[str]], p: str, where: str) -> None:
    """Bring a database to the latest of ``migrations`` (each a list of statements), recording each
    step in ``schema_version``; run inside the caller's transaction. A database of a newer schema
    than this gateway knows is refused."""
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = (row[0] if row else None) or 0
    if version > len(migrations):
        raise RuntimeError(f"{where} has ledger schema {version}, newer than this gateway's {len(migrations)}")
    for number in range(version + 1, len(migrations) + 1):
        for statement in migrations[number - 1]:
            execute(statement)
        execute(f"INSERT INTO schema_version (version) VALUES ({p})", (number,))
