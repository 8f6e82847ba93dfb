"""The Batch API's files and batches, kept in the ledger's database (SQLite or PostgreSQL).

In the database rather than in a directory, so that with several replicas every replica serves
every file and any replica can take over a batch whose runner went away, with no shared volume.

* ``files``: an uploaded file's bytes (``kind`` ``upload``), or a batch's output or error file,
  whose content is made on request from the batch's results (``batch_output``, ``batch_error``).
* ``batches``: the batch objects, with the claim (``lease_owner``, ``lease_until``) of the replica
  that runs it; a replica renews its claim while it works and loses it if it stops.
* ``batch_results``: one row per input line that has an answer, keyed by (batch, line): a line is
  recorded once, however often it ran, and a resumed batch runs only the lines without a row.
  Counts and the batch's energy come from these rows (energy by joining the usage ledger's
  rows on the request id).

Every method blocks on the database: call them off the event loop. A database that is away
raises ``LedgerUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from gateway.telemetry.ledger.service import LedgerUnavailable, Store

BATCH_COLUMNS = (
    "id", "created_at", "status", "endpoint", "input_file_id", "completion_window", "expires_at",
    "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "output_file_id", "error_file_id", "total", "errors", "metadata", "owner", "key_name", "team", "section",
    "lease_owner", "lease_until",
)  # fmt: skip
FILE_COLUMNS = ("id", "purpose", "filename", "bytes", "created_at", "expires_at", "owner", "team", "batch_id", "kind")
RUNNABLE = ("in_progress", "cancelling", "finalizing")  # a runner has work to do on these
ENDED = ("completed", "failed", "expired", "cancelled")
RESULT_PAGE = 500  # answered lines read at once when an output or error file is sent or sized
_USAGE = ("rows", "prompt", "completion", "joules", "provisional", "estimated")
_ROWS_PER_INSERT = 500  # 7 parameters a row: far below SQLite's 32,766


class JobStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.p = store.placeholder

    def _fetch(self, statement: str, args: list[Any]) -> list[dict[str, Any]]:
        try:
            return self.store.fetch(statement, args)
        except self.store.errors as exc:
            raise LedgerUnavailable(f"the batch store ({self.store.path}) is unreachable: {exc}") from exc

    def _execute(self, statement: str, args: list[Any]) -> int:
        try:
            return self.store.execute(statement, args)
        except self.store.errors as exc:
            raise LedgerUnavailable(f"the batch store ({self.store.path}) is unreachable: {exc}") from exc

    # ------------------------------------------------------------------ files

    def put_file(self, file: dict[str, Any], data: bytes | None) -> None:
        """Store a file; a file id stored already is left as it is (a batch's output file, made
        again by a runner that resumed its finalizing)."""
        columns = [*FILE_COLUMNS, "data"]
        self._execute(
            f"INSERT INTO files ({', '.join(columns)}) VALUES ({', '.join([self.p] * len(columns))}) "
            "ON CONFLICT (id) DO NOTHING",
            [*(file.get(c) for c in FILE_COLUMNS), data],
        )

    def file(self, file_id: str) -> dict[str, Any] | None:
        found = self._fetch(f"SELECT {', '.join(FILE_COLUMNS)} FROM files WHERE id = {self.p}", [file_id])
        return found[0] if found else None

    def file_data(self, file_id: str) -> bytes | None:
        found = self._fetch(f"SELECT data FROM files WHERE id = {self.p}", [file_id])
        return bytes(found[0]["data"]) if found and found[0]["data"] is not None else None

    def files(self, owner: str | None, everyone: bool, purpose: str | None, after: str | None,
              limit: int) -> list[dict[str, Any]]:  # fmt: skip
        """Newest first, from after the file ``after``; ``everyone``: whatever the owner (an admin
        key, or no keys configured)."""
        clauses, args = [], []
        if not everyone:
            clauses.append(f"owner {self.store.same_as} {self.p}")
            args.append(owner)
        if purpose is not None:
            clauses.append(f"purpose = {self.p}")
            args.append(purpose)
        if after is not None:
            clauses.append(f"(created_at, id) < (SELECT created_at, id FROM files WHERE id = {self.p})")
            args.append(after)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._fetch(
            f"SELECT {', '.join(FILE_COLUMNS)} FROM files{where} ORDER BY created_at DESC, id DESC LIMIT {self.p}",
            [*args, limit],
        )

    def file_in_use(self, file_id: str) -> bool:
        """Whether a batch that has not ended reads this file."""
        p = self.p
        return bool(self._fetch(
            f"SELECT id FROM batches WHERE input_file_id = {p} AND status NOT IN ({', '.join([p] * len(ENDED))}) "
            f"LIMIT 1", [file_id, *ENDED],
        ))  # fmt: skip

    def owner_bytes(self, owner: str | None, now: float) -> int:
        """What ``owner``'s uploads that have not expired hold, in bytes (the files_owner index)."""
        p, same = self.p, self.store.same_as
        row = self._fetch(
            f"SELECT COALESCE(SUM(bytes), 0) AS held FROM files WHERE owner {same} {p} AND kind = 'upload' "
            f"AND (expires_at IS NULL OR expires_at >= {p})", [owner, now],
        )  # fmt: skip
        return int(row[0]["held"])

    def delete_file(self, file_id: str) -> bool:
        return self._execute(f"DELETE FROM files WHERE id = {self.p}", [file_id]) > 0

    def expire_files(self, now: float) -> int:
        """Delete uploads past their expiry (a batch's own files go with nothing: they hold no data)."""
        return self._execute(
            f"DELETE FROM files WHERE kind = 'upload' AND expires_at IS NOT NULL AND expires_at < {self.p}", [now]
        )

    # ------------------------------------------------------------------ batches

    def put_batch(self, batch: dict[str, Any]) -> None:
        self._execute(
            f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({', '.join([self.p] * len(BATCH_COLUMNS))})",
            [_stored(c, batch.get(c)) for c in BATCH_COLUMNS],
        )

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        found = self._fetch(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id = {self.p}", [batch_id])
        return _loaded(found[0]) if found else None

    def batches(self, owner: str | None, everyone: bool, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first, from after the batch ``after`` (the list's cursor)."""
        clauses, args = [], []
        if not everyone:
            clauses.append(f"owner {self.store.same_as} {self.p}")
            args.append(owner)
        if after is not None:
            clauses.append(
                f"(created_at, id) < (SELECT created_at, id FROM batches WHERE id = {self.p})"
            )
            args.append(after)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        found = self._fetch(
            f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches{where} ORDER BY created_at DESC, id DESC LIMIT {self.p}",
            [*args, limit],
        )
        return [_loaded(r) for r in found]

    def update_batch(self, batch_id: str, fields: dict[str, Any], status_in: tuple[str, ...] = (),
                     holder: str | None = None) -> bool:  # fmt: skip
        """Set ``fields``; only while the status is one of ``status_in`` and the claim is
        ``holder``'s, when given. Whether it did."""
        sets = ", ".join(f"{c} = {self.p}" for c in fields)
        args: list[Any] = [_stored(c, v) for c, v in fields.items()]
        where = f"id = {self.p}"
        args.append(batch_id)
        if holder is not None:
            where += f" AND lease_owner = {self.p}"
            args.append(holder)
        if status_in:
            where += f" AND status IN ({', '.join([self.p] * len(status_in))})"
            args += list(status_in)
        return self._execute(f"UPDATE batches SET {sets} WHERE {where}", args) > 0

    def claim(self, replica: str, now: float, lease_s: float, limit: int) -> list[str]:
        """Take up to ``limit`` runnable batches nobody holds (or whose holder stopped renewing),
        oldest first; the ids this replica now holds (with those it already held)."""
        p = self.p
        free = f"(lease_owner = {p} OR lease_owner IS NULL OR lease_until < {p})"
        found = self._fetch(
            f"SELECT id FROM batches WHERE status IN ({', '.join([p] * len(RUNNABLE))}) AND {free} "
            f"ORDER BY created_at LIMIT {p}",
            [*RUNNABLE, replica, now, limit],
        )
        held = []
        for row in found:  # one row at a time: of two replicas racing for it, the update picks one
            if self._execute(
                f"UPDATE batches SET lease_owner = {p}, lease_until = {p} WHERE id = {p} AND {free}",
                [replica, now + lease_s, row["id"], replica, now],
            ):
                held.append(row["id"])
        return held

    def renew(self, batch_id: str, replica: str, now: float, lease_s: float) -> bool:
        """Extend this replica's claim; False if another replica has taken the batch over."""
        return self._execute(
            f"UPDATE batches SET lease_until = {self.p} WHERE id = {self.p} AND lease_owner = {self.p}",
            [now + lease_s, batch_id, replica],
        ) > 0

    def release(self, batch_id: str, replica: str) -> None:
        self._execute(
            f"UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE id = {self.p} AND lease_owner = {self.p}",
            [batch_id, replica],
        )

    def prune(self, before: float) -> int:
        """Delete the batches that ended and were created before ``before``, with their answers and
        output files; how many batches."""
        p = self.p
        ended = f"SELECT id FROM batches WHERE status IN ({', '.join([p] * len(ENDED))}) AND created_at < {p}"
        args = [*ENDED, before]
        self._execute(f"DELETE FROM batch_results WHERE batch_id IN ({ended})", args)
        self._execute(f"DELETE FROM files WHERE batch_id IN ({ended})", args)
        return self._execute(f"DELETE FROM batches WHERE id IN ({ended})", args)

    # ------------------------------------------------------------------ results

    def add_result(self, batch_id: str, line: int, custom_id: str, status_code: int | None,
                   request_id: str | None, body: Any, error: Any) -> bool:  # fmt: skip
        """Record a line's answer once; False if the line already had one (it ran twice)."""
        return self._execute(
            "INSERT INTO batch_results (batch_id, line, custom_id, status_code, request_id, body, error) "
            f"VALUES ({', '.join([self.p] * 7)}) ON CONFLICT (batch_id, line) DO NOTHING",
            [batch_id, line, custom_id, status_code, request_id, _json(body), _json(error)],
        ) > 0

    def add_errors(self, batch_id: str, lines: list[tuple[int, str]], error: Any) -> int:
        """Record the same ``error`` for many (line, custom_id) without an answer, a few hundred rows a
        statement (a cancelled batch's unsent lines); how many were recorded."""
        recorded, text = 0, _json(error)
        for start in range(0, len(lines), _ROWS_PER_INSERT):
            chunk = lines[start : start + _ROWS_PER_INSERT]
            values = ", ".join([f"({', '.join([self.p] * 7)})"] * len(chunk))
            args = [v for line, custom_id in chunk for v in (batch_id, line, custom_id, None, None, None, text)]
            recorded += self._execute(
                "INSERT INTO batch_results (batch_id, line, custom_id, status_code, request_id, body, error) "
                f"VALUES {values} ON CONFLICT (batch_id, line) DO NOTHING", args,
            )  # fmt: skip
        return recorded

    def done_lines(self, batch_id: str) -> set[int]:
        return {r["line"] for r in self._fetch(f"SELECT line FROM batch_results WHERE batch_id = {self.p}", [batch_id])}

    def counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed): lines answered 2xx, and the others."""
        return self.counts_of([batch_id])[batch_id]

    def counts_of(self, batch_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``counts`` of each batch, in one query."""
        if not batch_ids:
            return {}
        rows = self._fetch(
            "SELECT batch_id, COUNT(*) AS n, SUM(CASE WHEN status_code BETWEEN 200 AND 299 THEN 1 ELSE 0 END) AS ok "
            f"FROM batch_results WHERE batch_id IN ({', '.join([self.p] * len(batch_ids))}) GROUP BY batch_id",
            list(batch_ids),
        )
        found = {r["batch_id"]: (int(r["ok"]), int(r["n"]) - int(r["ok"])) for r in rows}
        return {batch_id: found.get(batch_id, (0, 0)) for batch_id in batch_ids}

    def usage(self, batch_id: str) -> dict[str, Any]:
        """Tokens and energy of the batch's answered requests, from the usage ledger's rows."""
        return self.usage_of([batch_id])[batch_id]

    def usage_of(self, batch_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``usage`` of each batch, in one query."""
        if not batch_ids:
            return {}
        rows = self._fetch(
            "SELECT b.batch_id, COUNT(r.request_id) AS rows, SUM(r.prompt_tokens) AS prompt, "
            "SUM(r.completion_tokens) AS completion, SUM(r.energy_j) AS joules, "
            "SUM(CASE WHEN r.energy_final = 1 THEN 0 ELSE 1 END) AS provisional, "
            "SUM(CASE WHEN r.energy_source = 'estimated' THEN 1 ELSE 0 END) AS estimated "
            "FROM batch_results b JOIN requests r ON r.request_id = b.request_id "
            f"WHERE b.batch_id IN ({', '.join([self.p] * len(batch_ids))}) GROUP BY b.batch_id",
            list(batch_ids),
        )
        found = {r["batch_id"]: {k: r[k] or 0 for k in _USAGE} for r in rows}
        return {batch_id: found.get(batch_id) or dict.fromkeys(_USAGE, 0) for batch_id in batch_ids}

    def result_size(self, batch_id: str, ok: bool) -> int:
        """The size in bytes of the batch's output (``ok``) or error file, read a page at a time."""
        return sum(len(chunk) for chunk in self.result_chunks(batch_id, ok))

    def result_chunks(self, batch_id: str, ok: bool, page: int | None = None) -> Iterator[bytes]:
        """The batch's output (``ok``) or error file in pieces of up to ``page`` (``RESULT_PAGE``)
        lines, each piece read from the store when it is needed: what a download holds in memory
        is one page."""
        page = page or RESULT_PAGE
        after = -1
        while True:
            lines, after = self._result_page(batch_id, ok, after, page)
            if lines:
                yield b"".join(lines)
            if len(lines) < page:
                return

    def _result_page(self, batch_id: str, ok: bool, after: int, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` JSON lines of the output (``ok``) or error file, for the input lines after
        ``after`` in input order; with the last input line they answer."""
        test = "BETWEEN 200 AND 299" if ok else "IS NULL OR status_code NOT BETWEEN 200 AND 299"
        rows = self._fetch(
            "SELECT line, custom_id, status_code, request_id, body, error FROM batch_results "
            f"WHERE batch_id = {self.p} AND line > {self.p} AND (status_code {test}) ORDER BY line LIMIT {self.p}",
            [batch_id, after, limit],
        )
        out = []
        for r in rows:
            response = None
            if r["status_code"] is not None:
                response = {"status_code": r["status_code"], "request_id": r["request_id"],
                            "body": orjson.loads(r["body"]) if r["body"] else None}  # fmt: skip
            out.append(orjson.dumps({
                "id": f"batch_req_{batch_id.removeprefix('batch_')}_{r['line']}", "custom_id": r["custom_id"],
                "response": response, "error": orjson.loads(r["error"]) if r["error"] else None,
            }) + b"\n")  # fmt: skip
        return out, rows[-1]["line"] if rows else after


_JSON_COLUMNS = ("errors", "metadata")


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _stored(column: str, value: Any) -> Any:
    return _json(value) if column in _JSON_COLUMNS else value


def _loaded(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in _JSON_COLUMNS:
        if out.get(column):
            out[column] = orjson.loads(out[column])
    return out

