"""Runs the Batch API's batches in the valleys of interactive traffic.

Every replica runs a ``BatchRunner``. It claims runnable batches from the ledger's database (a
lease it renews; a replica that dies loses its claims and another replica, or itself after a
restart, takes them over) and sends their requests through the gateway's own request path, in
process, as the key that created the batch: policy, routing, failover, energy and the ledger
apply to each as to any request.

**When a request goes.** At most ``batch.max_inflight`` batch requests run at once per replica,
and a new one goes only while no healthy backend has a request waiting and every model has a
replica whose KV cache is below ``batch.kv_cache_limit`` (``BackendPool.has_room``, from vLLM's
gauges, read every ``server.load_interval_s``). Interactive requests therefore never queue behind
batch work: as soon as one waits, no more batch requests go until the queue is empty again. Where
a model has several replicas, batch requests pack onto the one already running deferred work
while it has room, and interactive requests prefer the others (``BackendPool.serving``), so they
need not wait for a batch's step.

**No request lost, none answered twice.** A line's answer is recorded once, keyed by (batch,
line), as it arrives; a resumed batch runs only the lines without one. A line that was running
when its replica died runs again (its first answer never arrived), so the backend may have done
that work twice; the output has it once.

**The end of a batch.** When every line has an answer the batch is ``completed``; a cancelled
batch (``cancelling``) or one past its completion window stops sending, lets the running requests
finish and ends ``cancelled`` or ``expired``, its unsent lines in the error file (codes
``batch_cancelled``, ``batch_expired``). The output and error files are made from the answers
when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from gateway.api.http import BATCH_IDENTITY, ASGIApp
from gateway.config import BatchConfig
from gateway.policy.keys import Identity, KeyRing
from gateway.proxy.backends import BackendPool
from gateway.telemetry.ledger import LedgerUnavailable
from gateway.telemetry.ledger.jobs import JobStore

log = logging.getLogger("gateway.batch")

_GATE_POLL_S = 0.05  # how often a waiting dispatch looks at the backends' room again
_STATUS_EVERY_S = 1.0  # how often a running batch reads its status (a cancel) back
_ATTEMPTS = 3  # tries of a line the backends or the gateway could not serve just then
_RETRY = {429, 502, 503, 504}


class BatchRunner:
    def __init__(
        self, jobs: JobStore, app: ASGIApp, pool: BackendPool, config: BatchConfig, replica: str, keys: KeyRing
    ) -> None:
        self.jobs = jobs
        self.keys = keys
        self.app = app
        self.pool = pool
        self.config = config
        self.replica = replica
        self.slots = asyncio.Semaphore(config.max_inflight)
        self.inflight = 0
        self.workers: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_expiry = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._claim_loop(), name="batch-runner")

    async def stop(self) -> None:
        """Stop sending; running requests are cancelled and the claims released (another replica,
        or this one after a restart, resumes the batches)."""
        tasks = [t for t in (self._task, *self.workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for batch_id in list(self.workers):
            with contextlib.suppress(LedgerUnavailable):
                await asyncio.to_thread(self.jobs.release, batch_id, self.replica)
        self.workers.clear()

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self._claim_once()
            except LedgerUnavailable as exc:
                log.warning("batch runner: the batch store is unreachable (%s); retrying", exc)
            except Exception:  # a bug must not stop every batch for good
                log.exception("batch runner: claiming failed")
            await asyncio.sleep(self.config.poll_interval_s)

    async def _claim_once(self) -> None:
        now = time.time()
        if now - self._last_expiry > 3600.0:  # uploads past their expiry; batches ended that long ago
            self._last_expiry = now
            await asyncio.to_thread(self.jobs.expire_files, now)
            await asyncio.to_thread(self.jobs.prune, now - self.config.file_ttl_days * 86400.0)
        for batch_id, task in list(self.workers.items()):
            if task.done():
                del self.workers[batch_id]
        room = self.config.max_running_batches - len(self.workers)
        if room <= 0:
            return
        claimed = await asyncio.to_thread(self.jobs.claim, self.replica, now, self.config.lease_s, room)
        for batch_id in claimed:
            if batch_id not in self.workers:
                self.workers[batch_id] = asyncio.create_task(self._run(batch_id), name=f"batch:{batch_id}")

    # ------------------------------------------------------------------ one batch

    async def _run(self, batch_id: str) -> None:
        try:
            await self._work(batch_id)
        except LedgerUnavailable as exc:  # the claim lapses; whoever holds it next resumes
            log.warning("batch %s paused: the batch store is unreachable (%s)", batch_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: the runner failed; it resumes at the next claim", batch_id)
            with contextlib.suppress(LedgerUnavailable):
                await asyncio.to_thread(self.jobs.release, batch_id, self.replica)

    async def _work(self, batch_id: str) -> None:
        jobs = self.jobs
        batch = await asyncio.to_thread(jobs.batch, batch_id)
        if batch is None or batch["status"] not in ("in_progress", "cancelling", "finalizing"):
            return
        data = await asyncio.to_thread(jobs.file_data, batch["input_file_id"])
        lines = await asyncio.to_thread(_parse, data or b"")  # megabytes: off the loop
        done = await asyncio.to_thread(jobs.done_lines, batch_id)
        pending = [i for i in range(len(lines)) if i not in done]
        ident = self._identity(batch)
        lost = asyncio.Event()
        renew = asyncio.create_task(self._keep_claim(batch_id, lost))
        running: set[asyncio.Task[None]] = set()
        watch = _Watch(jobs, batch)
        stop_reason = None if ident is not None else "key_revoked"
        try:
            for index in pending:
                if ident is None:
                    break
                stop_reason = await watch.stop_reason()
                if stop_reason is not None or lost.is_set():
                    break
                if not await self._wait_for_room(watch, lost):
                    stop_reason = await watch.stop_reason()
                    break
                task = asyncio.create_task(self._send(batch, ident, index, lines[index]))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
            if lost.is_set():
                return
            await self._finish(batch, lines, stop_reason)
        finally:
            for task in running:
                task.cancel()
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    def _identity(self, batch: dict[str, Any]) -> Identity | None:
        """Who the batch's requests run as: its key as configured now (None: the key was removed);
        anonymous only where no keys are configured."""
        if batch["owner"] is None:
            return Identity(key_hash=None, key_name=batch["key_name"], team=batch["team"] or "default",
                            section=batch["section"])  # fmt: skip
        return self.keys.by_hash(batch["owner"])

    async def _keep_claim(self, batch_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                held = await asyncio.to_thread(self.jobs.renew, batch_id, self.replica, time.time(),
                                               self.config.lease_s)  # fmt: skip
            except LedgerUnavailable:
                continue  # the store is away: keep working, the answers wait in memory of the sends
            if not held:
                log.warning("batch %s: the claim was lost to another replica; stopping here", batch_id)
                lost.set()
                return

    async def _wait_for_room(self, watch: _Watch, lost: asyncio.Event) -> bool:
        """A slot of ``max_inflight`` and room on the backends (interactive requests go first);
        False, with no slot, if the batch must stop meanwhile (cancelled, expired, taken over)."""
        await self.slots.acquire()
        try:
            while not self.pool.has_room():
                if lost.is_set() or await watch.stop_reason() is not None:
                    self.slots.release()
                    return False
                await asyncio.sleep(_GATE_POLL_S)
        except BaseException:  # cancelled while waiting: the slot goes back
            self.slots.release()
            raise
        return True

    async def _send(self, batch: dict[str, Any], ident: Identity, index: int, line: dict[str, Any]) -> None:
        self.inflight += 1
        error: dict[str, str] | None = None
        status: int | None = None
        request_id = body = None
        try:
            for attempt in range(_ATTEMPTS):  # a busy or briefly unreachable backend is retried, not failed
                try:
                    status, request_id, body = await self.call(ident, line["url"], line["body"])
                    error = None
                except Exception as exc:  # noqa: BLE001 - recorded as the line's error, never lost
                    log.exception("batch %s line %d failed in the gateway", batch["id"], index)
                    status = request_id = body = None
                    error = {"code": "internal_error",
                             "message": f"The gateway failed on this request: {type(exc).__name__}"}  # fmt: skip
                if status not in _RETRY and error is None or attempt == _ATTEMPTS - 1:
                    break
                await asyncio.sleep(2.0**attempt)
        finally:
            self.inflight -= 1
            self.slots.release()
        delay = 0.5
        while True:  # the answer must land: a store that is away is waited for, never skipped
            try:
                await asyncio.to_thread(self.jobs.add_result, batch["id"], index, line["custom_id"], status,
                                        request_id, body, error)  # fmt: skip
                return
            except LedgerUnavailable as exc:
                log.warning("batch %s line %d: cannot record its answer yet (%s)", batch["id"], index, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def call(self, ident: Identity, path: str, body: dict[str, Any]) -> tuple[int, str | None, Any]:
        """One request through the gateway's own app, as ``ident``: (status, request id, JSON body)."""
        raw = orjson.dumps({k: v for k, v in body.items() if k not in ("stream", "stream_options")})
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
            "client": ("batch", 0), "server": ("gateway", 0), BATCH_IDENTITY: ident,
        }  # fmt: skip
        sent = False
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await never.wait()  # the "client" never leaves
            return {"type": "http.disconnect"}

        status, headers, chunks = 500, {}, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)  # type: ignore[arg-type]  # starlette's Message is a MutableMapping
        payload = b"".join(chunks)
        try:
            parsed = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            parsed = {"error": {"message": payload[:512].decode("utf-8", "replace")}}
        return status, headers.get("x-request-id"), parsed

    async def _finish(self, batch: dict[str, Any], lines: list[dict[str, Any]], stop_reason: str | None) -> None:
        """Every line answered, or the batch stopped: the unsent lines as errors, the files, the end state."""
        jobs, batch_id = self.jobs, batch["id"]
        done = await asyncio.to_thread(jobs.done_lines, batch_id)
        if stop_reason is None and len(done) < len(lines):  # an answer went missing: resume, never finish short
            await asyncio.to_thread(jobs.release, batch_id, self.replica)
            return
        if stop_reason is not None:
            code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(stop_reason, stop_reason)
            message = _STOPPED[stop_reason]
            unsent = [(index, line["custom_id"]) for index, line in enumerate(lines) if index not in done]
            await asyncio.to_thread(jobs.add_errors, batch_id, unsent, {"code": code, "message": message})
        now = time.time()
        if not await asyncio.to_thread(jobs.update_batch, batch_id, {"status": "finalizing", "finalizing_at": now},
                                       ("in_progress", "cancelling", "finalizing"), self.replica):  # fmt: skip
            return  # another replica holds it now, or it ended meanwhile
        completed, failed = await asyncio.to_thread(jobs.counts, batch_id)
        fields: dict[str, Any] = {}
        for kind, count, column in (("batch_output", completed, "output_file_id"),
                                    ("batch_error", failed, "error_file_id")):  # fmt: skip
            if count == 0:
                continue
            size = await asyncio.to_thread(jobs.result_size, batch_id, kind == "batch_output")
            # one id per batch and kind: a runner that resumes a finalizing batch makes the same file
            file_id = f"file-{batch_id.removeprefix('batch_')}-{kind.split('_')[1]}"
            await asyncio.to_thread(jobs.put_file, {
                "id": file_id, "purpose": "batch_output", "filename": f"{batch_id}_{kind.split('_')[1]}.jsonl",
                "bytes": size, "created_at": now, "expires_at": now + self.config.file_ttl_days * 86400.0,
                "owner": batch["owner"], "team": batch["team"], "batch_id": batch_id, "kind": kind,
            }, None)  # fmt: skip
            fields[column] = file_id
        end = {"cancelled": "cancelled", "expired": "expired", "key_revoked": "failed"}.get(stop_reason or "",
                                                                                             "completed")  # fmt: skip
        fields.update({"status": end, f"{end}_at": now, "lease_owner": None, "lease_until": None})
        if stop_reason == "key_revoked":
            fields["errors"] = {"object": "list", "data": [{"code": "key_revoked", "message": _STOPPED[stop_reason],
                                                            "param": None, "line": None}]}  # fmt: skip
        await asyncio.to_thread(jobs.update_batch, batch_id, fields, ("finalizing",), self.replica)
        log.info("batch %s %s: %d completed, %d failed", batch_id, end, completed, failed)


class _Watch:
    """A running batch's reasons to stop, its status read back at most every ``_STATUS_EVERY_S``."""

    def __init__(self, jobs: JobStore, batch: dict[str, Any]) -> None:
        self.jobs = jobs
        self.batch = batch
        self.status = batch["status"]
        self.checked = 0.0

    async def stop_reason(self) -> str | None:
        if time.monotonic() - self.checked > _STATUS_EVERY_S:
            self.checked = time.monotonic()
            try:
                current = await asyncio.to_thread(self.jobs.batch, self.batch["id"])
            except LedgerUnavailable:
                current = {"status": self.status}  # keep the last known: the store comes back
            self.status = current["status"] if current is not None else "cancelling"
        if self.status == "cancelling":
            return "cancelled"
        if time.time() > self.batch["expires_at"]:
            return "expired"
        return None


def _parse(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in data.splitlines() if raw.strip()]


_STOPPED = {
    "cancelled": "The batch was cancelled before this request was sent.",
    "expired": "The batch's completion window ended before this request was sent.",
    "key_revoked": "The API key that created the batch is no longer configured; its requests were not sent.",
}
