"""OpenAI's Batch API: ``/v1/files`` and ``/v1/batches``, shaped as the ``openai`` SDK expects.

A client uploads a JSONL file of requests (``purpose: batch``), creates a batch over it and
polls it; the gateway runs the requests when its backends have room (``batchrun.BatchRunner``)
and serves the answers as the batch's output file. Each answer went through the same path as an
interactive request (policy, routing, energy, ledger), so it carries ``usage.energy``, and the
batch object reports the batch's tokens and energy.

What is checked when a batch is created (each a ``failed`` batch with its errors, as OpenAI
reports a file that fails validation): every line a JSON object with a unique ``custom_id``,
``method: POST``, the batch's ``url`` and an object ``body``; at most ``batch.max_lines`` lines.
``completion_window`` is ``24h``, as OpenAI's.

Who sees what: with no API keys configured everything is open; once keys exist the Batch API
needs a key (even where generation does not: anonymous callers would share one owner), a key
sees its own files and batches, an ``admin`` key everyone's. A batch's requests run as the key
that created it, as the key is configured when each batch is run (its team, policy section and
budgets; a key removed from the config stops its batches).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import secrets
import time
from typing import Any

import orjson

from gateway.api.http import BodyBudget, Request
from gateway.config import BatchConfig, ServerConfig
from gateway.errors import GatewayError, bad_request
from gateway.policy.keys import Identity, KeyRing
from gateway.telemetry.ledger import LedgerUnavailable
from gateway.telemetry.ledger.jobs import JobStore

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
WINDOWS = {"24h": 86400.0}
MAX_LIST = 100
MAX_ERRORS = 20  # validation errors reported per batch (the first ones)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
        "expires_at": int(row["expires_at"]) if row.get("expires_at") else None, "filename": row["filename"],
        "purpose": row["purpose"], "status": "processed", "status_details": None,
    }  # fmt: skip


def batch_object(row: dict[str, Any], counts: tuple[int, int], usage: dict[str, Any] | None) -> dict[str, Any]:
    completed, failed = counts
    out: dict[str, Any] = {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"], "errors": row.get("errors"),
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"], "status": row["status"],
        "output_file_id": row.get("output_file_id"), "error_file_id": row.get("error_file_id"),
        "created_at": int(row["created_at"]),
        "request_counts": {"total": row["total"], "completed": completed, "failed": failed},
        "metadata": row.get("metadata"),
    }  # fmt: skip
    for field in ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                  "cancelling_at", "cancelled_at"):  # fmt: skip
        out[field] = int(row[field]) if row.get(field) is not None else None
    if usage is not None and usage["rows"]:
        prompt, completion = int(usage["prompt"]), int(usage["completion"])
        out["usage"] = {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion,
        }  # fmt: skip
        joules = float(usage["joules"])
        source = "estimated" if usage["estimated"] else "measured"
        out["energy"] = {
            "joules": round(joules, 3), "wh": round(joules / 3600.0, 6),
            "source": f"{source}-provisional" if usage["provisional"] else source,
        }  # fmt: skip
    return out


def check_lines(data: bytes, endpoint: str, max_lines: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The requests of an input file, or the errors that fail its batch (OpenAI's codes)."""
    lines: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            error("invalid_json_line", "This line is not valid JSON.", number)
            continue
        if not isinstance(item, dict):
            error("invalid_json_line", "A line must be a JSON object.", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_required_parameter", "Each line needs a 'custom_id' string.", number, "custom_id")
        elif custom_id in seen:
            error("duplicate_custom_id", f"The custom_id {custom_id[:64]!r} is used twice.", number, "custom_id")
        else:
            seen.add(custom_id)
        if item.get("method") != "POST":
            error("invalid_method", "The 'method' of each line must be POST.", number, "method")
        if item.get("url") != endpoint:
            error("mismatched_endpoint", f"The 'url' of each line must be the batch's endpoint {endpoint}.",
                  number, "url")  # fmt: skip
        if not isinstance(item.get("body"), dict):
            error("invalid_request", "Each line needs a 'body' object.", number, "body")
        lines.append(item)
        if len(lines) > max_lines:
            error("too_many_requests", f"A batch holds at most {max_lines:,} requests.", number)
            break
    if not lines and not errors:
        error("empty_file", "The input file has no requests.", None)
    return lines, errors


def _multipart(request: Request, raw: bytes) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """A multipart/form-data body: its plain fields, and its ``file`` field (filename, bytes)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_request("Upload the file as multipart/form-data (fields 'file' and 'purpose').")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"content-type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        raise bad_request("The multipart body could not be read (boundary?).")
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            upload = (part.get_filename() or "upload.jsonl", payload)
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields, upload


class BatchEndpoints:
    """The route handlers of ``/v1/files`` and ``/v1/batches``."""

    def __init__(
        self, jobs: JobStore, keys: KeyRing, config: BatchConfig, body_budget: BodyBudget, server: ServerConfig
    ) -> None:
        self.jobs = jobs
        self.keys = keys
        self.config = config
        self.body_budget = body_budget
        self.server = server  # the body limits and deadline

    # ------------------------------------------------------------------ shared

    def _who(self, request: Request) -> tuple[Identity, bool]:
        """The caller, and whether it sees everyone's objects."""
        ident = self.keys.authenticate(request.headers)
        if len(self.keys) and ident.key_hash is None:
            raise GatewayError(401, "The Batch API needs an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                               code="invalid_api_key", type="invalid_request_error")  # fmt: skip
        return ident, ident.admin or not len(self.keys)

    async def _db(self, call, *args):
        try:
            return await asyncio.to_thread(call, *args)
        except LedgerUnavailable:
            raise GatewayError(503, "The batch store is unreachable; try again shortly.", code="store_unavailable",
                               headers={"retry-after": "5"}) from None  # fmt: skip

    async def _answer(self, request: Request, handler) -> None:
        try:
            status, body = await handler()
        except GatewayError as err:
            await request.error(err)
            return
        await request.json(status, body)

    async def _owned(self, request: Request, kind: str) -> dict[str, Any]:
        """The file or batch the path names, if the caller may see it; else 404 (as if missing)."""
        ident, everyone = self._who(request)
        key = "file_id" if kind == "File" else "batch_id"
        wanted = request.path_params[key]
        row = await self._db(self.jobs.file if kind == "File" else self.jobs.batch, wanted)
        if row is None or not (everyone or row["owner"] == ident.key_hash):
            raise GatewayError(404, f"No such {kind} object: {wanted[:64]}", code=f"{kind.lower()}_not_found",
                               param="id")  # fmt: skip
        return row

    async def _own_file(self, request: Request) -> dict[str, Any]:
        return await self._owned(request, "File")

    async def _own_batch(self, request: Request) -> dict[str, Any]:
        return await self._owned(request, "Batch")

    async def _batch_object(self, row: dict[str, Any]) -> dict[str, Any]:
        counts = await self._db(self.jobs.counts, row["id"])
        usage = await self._db(self.jobs.usage, row["id"])
        return batch_object(row, counts, usage)

    # ------------------------------------------------------------------ files

    async def upload(self, request: Request) -> None:
        async def handle():
            ident, _ = self._who(request)
            raw = await request.body(self.config.max_file_bytes + 64 * 1024, self.server.body_timeout_s,
                                     self.body_budget)  # fmt: skip
            fields, upload = await asyncio.to_thread(_multipart, request, raw)  # megabytes: off the loop
            purpose = fields.get("purpose")
            if purpose != "batch":
                raise bad_request("This gateway stores files for the Batch API only: purpose must be 'batch'.",
                                  param="purpose")  # fmt: skip
            if upload is None:
                raise bad_request("The 'file' field is missing.", param="file")
            filename, data = upload
            if len(data) > self.config.max_file_bytes:
                raise GatewayError(413, f"Files may be at most {self.config.max_file_bytes:,} bytes.",
                                   code="file_too_large", param="file")  # fmt: skip
            now = time.time()
            held = await self._db(self.jobs.owner_bytes, ident.key_hash, now)
            if held + len(data) > self.config.max_owner_bytes:
                raise GatewayError(413, f"This key's files hold {held:,} bytes; with this one they would pass its "
                                   f"limit of {self.config.max_owner_bytes:,}. Delete files it no longer needs.",
                                   code="storage_limit_exceeded", param="file")  # fmt: skip
            row = {"id": new_id("file-"), "purpose": purpose, "filename": filename[:256], "bytes": len(data),
                   "created_at": now, "expires_at": now + self.config.file_ttl_days * 86400.0,
                   "owner": ident.key_hash, "team": ident.team, "kind": "upload"}  # fmt: skip
            await self._db(self.jobs.put_file, row, data)
            return 200, file_object(row)

        await self._answer(request, handle)

    async def list_files(self, request: Request) -> None:
        async def handle():
            ident, everyone = self._who(request)
            query = request.query()
            purpose = query["purpose"][0] if query.get("purpose") else None
            after = query["after"][0] if query.get("after") else None
            limit = _limit(query, 10000)
            rows = await self._db(self.jobs.files, ident.key_hash, everyone, purpose, after, limit + 1)
            data = [file_object(r) for r in rows[:limit]]
            return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}  # fmt: skip

        await self._answer(request, handle)

    async def get_file(self, request: Request) -> None:
        async def handle():
            return 200, file_object(await self._own_file(request))

        await self._answer(request, handle)

    async def delete_file(self, request: Request) -> None:
        async def handle():
            row = await self._own_file(request)
            if await self._db(self.jobs.file_in_use, row["id"]):
                raise GatewayError(409, "A batch that has not ended reads this file; cancel it first.",
                                   code="file_in_use", param="id")  # fmt: skip
            deleted = await self._db(self.jobs.delete_file, row["id"])
            return 200, {"id": row["id"], "object": "file", "deleted": deleted}

        await self._answer(request, handle)

    async def file_content(self, request: Request) -> None:
        try:
            row = await self._own_file(request)
            if row["kind"] == "upload":
                data = await self._db(self.jobs.file_data, row["id"])
            else:  # a batch's output or error file: its answered lines, read a page at a time
                pages = self.jobs.result_chunks(row["batch_id"], row["kind"] == "batch_output")
                page = await self._db(next, pages, b"")
        except GatewayError as err:
            await request.error(err)
            return
        if row["kind"] == "upload":
            await request.respond(200, data or b"", b"application/octet-stream")
            return
        # no content-length: the server sends it chunked; a store that fails midway ends the
        # response early, which the client sees as a broken download rather than a short file
        await request.start(200, [(b"content-type", b"application/octet-stream")])
        while page:
            await request.send({"type": "http.response.body", "body": page, "more_body": True})
            page = await self._db(next, pages, b"")
        await request.send({"type": "http.response.body", "body": b"", "more_body": False})

    # ------------------------------------------------------------------ batches

    async def create(self, request: Request) -> None:
        async def handle():
            ident, everyone = self._who(request)
            raw = await request.body(self.server.max_body_bytes, self.server.body_timeout_s, self.body_budget)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise bad_request("The body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise bad_request("The body must be a JSON object.")
            endpoint, window = body.get("endpoint"), body.get("completion_window")
            if endpoint not in ENDPOINTS:
                raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
            if window not in WINDOWS:
                raise bad_request("'completion_window' must be '24h'.", param="completion_window")
            metadata = body.get("metadata")
            if metadata is not None and not (
                isinstance(metadata, dict) and len(metadata) <= 16
                and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                        for k, v in metadata.items())
            ):  # fmt: skip
                raise bad_request("'metadata' holds at most 16 string pairs (keys 64, values 512 characters).",
                                  param="metadata")  # fmt: skip
            file_id = body.get("input_file_id")
            if not isinstance(file_id, str):
                raise bad_request("'input_file_id' is required.", param="input_file_id")
            file = await self._db(self.jobs.file, file_id)
            if file is None or not (everyone or file["owner"] == ident.key_hash) or file["kind"] != "upload":
                raise GatewayError(404, f"No such File object: {file_id[:64]}", code="file_not_found",
                                   param="input_file_id")  # fmt: skip
            if file["purpose"] != "batch":
                raise bad_request("The input file's purpose must be 'batch'.", param="input_file_id")
            data = await self._db(self.jobs.file_data, file_id)
            lines, errors = await asyncio.to_thread(check_lines, data or b"", endpoint, self.config.max_lines)
            now = time.time()
            row: dict[str, Any] = {
                "id": new_id("batch_"), "created_at": now, "endpoint": endpoint, "input_file_id": file_id,
                "completion_window": window, "expires_at": now + WINDOWS[window], "total": len(lines),
                "metadata": metadata, "owner": ident.key_hash, "key_name": ident.key_name, "team": ident.team,
                "section": ident.section,
            }  # fmt: skip
            if errors:
                row.update(status="failed", failed_at=now, total=0, errors={"object": "list", "data": errors})
            else:
                row.update(status="in_progress", in_progress_at=now)
            await self._db(self.jobs.put_batch, row)
            return 200, batch_object(row, (0, 0), None)

        await self._answer(request, handle)

    async def get(self, request: Request) -> None:
        async def handle():
            return 200, await self._batch_object(await self._own_batch(request))

        await self._answer(request, handle)

    async def list_batches(self, request: Request) -> None:
        async def handle():
            ident, everyone = self._who(request)
            query = request.query()
            limit = _limit(query, MAX_LIST)
            after = query["after"][0] if query.get("after") else None
            rows = await self._db(self.jobs.batches, ident.key_hash, everyone, after, limit + 1)
            ids = [r["id"] for r in rows[:limit]]
            counts = await self._db(self.jobs.counts_of, ids)
            usage = await self._db(self.jobs.usage_of, ids)
            data = [batch_object(r, counts[r["id"]], usage[r["id"]]) for r in rows[:limit]]
            return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}  # fmt: skip

        await self._answer(request, handle)

    async def cancel(self, request: Request) -> None:
        async def handle():
            row = await self._own_batch(request)
            now = time.time()
            moved = await self._db(self.jobs.update_batch, row["id"], {"status": "cancelling", "cancelling_at": now},
                                   ("validating", "in_progress"))  # fmt: skip
            if not moved and row["status"] not in ("cancelling", "cancelled"):
                raise GatewayError(409, f"A batch that is {row['status']} cannot be cancelled.",
                                   code="batch_not_cancellable")  # fmt: skip
            return 200, await self._batch_object(await self._own_batch(request))

        await self._answer(request, handle)


def _limit(query: dict[str, list[str]], most: int) -> int:
    value = (query.get("limit") or ["20"])[0]
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise bad_request(f"Invalid 'limit': give an integer from 1 to {most}.", param="limit")
    return int(value)
