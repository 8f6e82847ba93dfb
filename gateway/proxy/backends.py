"""The vLLM servers behind the gateway: what they serve, whether they are up, how busy.

A background task per backend asks ``/health`` every ``health_interval_s`` and reads the
queue depth (``vllm:num_requests_waiting``) from ``/metrics`` every ``load_interval_s``.
On first contact (and whenever a backend comes back) it reads ``/v1/models`` (served
names, ``max_model_len``) and ``/version``. A request that cannot reach a backend marks it
down at once (passive check); only a successful ``/health`` brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from gateway.config import BackendConfig

log = logging.getLogger("gateway.backends")


@dataclass(slots=True)
class ServedModel:
    name: str
    max_model_len: int | None = None
    root: str | None = None


@dataclass(slots=True)
class Backend:
    config: BackendConfig
    healthy: bool = False
    models: dict[str, ServedModel] = field(default_factory=dict)
    vllm_version: str | None = None
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0  # share of the KV cache in use (vllm:kv_cache_usage_perc), 0-1
    inflight: int = 0  # requests this gateway has open on it now
    deferred: int = 0  # of those, deferrable ones (service tier flex or batch)
    last_error: str | None = None
    checked_at: float = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return self.config.url

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def opened(self, deferred: bool) -> None:
        self.inflight += 1
        self.deferred += deferred

    def closed(self, deferred: bool) -> None:
        self.inflight -= 1
        self.deferred -= deferred

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            log.warning("backend %s marked down: %s", self.name, reason)
        self.healthy = False
        self.last_error = reason


def _parse_gauges(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum the samples of the given metric names in a Prometheus text page (all label sets)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(names):
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name, _, value = line.partition(" ")
        else:
            value = rest.rpartition("} ")[2]
        try:
            out[name] = out.get(name, 0.0) + float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return out


class BackendPool:
    def __init__(
        self,
        configs: list[BackendConfig],
        session_factory: Callable[[], aiohttp.ClientSession],
        health_interval_s: float = 2.0,
        load_interval_s: float = 1.0,
        metrics=None,
        kv_limit: float = 0.8,
    ):
        self.backends = [Backend(c) for c in configs]
        self.kv_limit = kv_limit  # deferrable work goes to a replica whose KV cache is below it (batch.kv_cache_limit)
        self.by_name = {b.name: b for b in self.backends}
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self.health_interval_s = health_interval_s
        self.load_interval_s = load_interval_s
        self.metrics = metrics
        self._tasks: list[asyncio.Task] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when the set of healthy backends or their models changes."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def start(self) -> None:
        self._session = self._session_factory()
        self._tasks = [asyncio.create_task(self._watch(b), name=f"watch:{b.name}") for b in self.backends]
        # Give the first round of checks a moment, so a fresh gateway knows its models.
        await asyncio.wait(
            [asyncio.create_task(self._checked_once(b)) for b in self.backends], timeout=self.health_interval_s * 2
        )

    async def _checked_once(self, backend: Backend) -> None:
        while backend.checked_at == 0.0:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def serving(self, model: str, deferred: bool = False) -> list[Backend]:
        """Healthy backends serving ``model``, in the order to try them.

        Interactive requests go to the least busy (requests waiting and open), counting all the
        deferrable work a replica runs as one request: its GPU then steps without pause, and an
        arriving request waits for the step in progress whatever the batch's size. Deferrable
        work (``deferred``) packs onto the replicas already running it, so that its batches fill
        and the other replicas stay idle for interactive requests, as long as they have room
        (``_roomy``); replicas without room last.
        """
        found = [b for b in self.backends if b.healthy and model in b.models]
        if len(found) > 1:
            if deferred:
                found.sort(key=lambda b: (not self._roomy(b), -b.deferred, b.inflight, b.running))
            else:
                found.sort(key=lambda b: (b.waiting + b.inflight - b.deferred + (b.deferred > 0), b.running))
        return found

    def has_room(self) -> bool:
        """Deferrable work may go, as last read: no healthy backend has requests waiting (so
        interactive requests never queue behind it), and every model served has a replica whose
        KV cache is below ``kv_limit`` (where ``serving`` sends deferrable work; a backend whose
        models are not known yet is sent nothing)."""
        healthy = [b for b in self.backends if b.healthy]
        if not healthy or any(b.waiting for b in healthy):
            return False
        full: set[str] = set()
        roomy: set[str] = set()
        for b in healthy:
            (roomy if self._roomy(b) else full).update(b.models)
        return bool(roomy) and full <= roomy

    def _roomy(self, backend: Backend) -> bool:
        return backend.waiting == 0 and backend.kv_usage < self.kv_limit

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.backends)

    # ------------------------------------------------------------------ checks

    async def _watch(self, backend: Backend) -> None:
        next_health = next_load = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_health:
                    await self.check(backend)
                    next_health = now + self.health_interval_s
                if backend.healthy and now >= next_load:
                    await self._read_load(backend)
                    next_load = now + self.load_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a watcher must never die
                log.exception("backend %s: check failed: %s", backend.name, exc)
            wake = min(next_health, next_load) if backend.healthy else next_health
            await asyncio.sleep(max(0.05, wake - time.monotonic()))

    async def check(self, backend: Backend) -> None:
        """One health check; on (re)discovery also refresh models and version."""
        assert self._session is not None
        was_healthy = backend.healthy
        try:
            async with self._session.get(f"{backend.url}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                ok = r.status == 200
                reason = None if ok else f"/health answered {r.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            ok, reason = False, f"/health unreachable: {exc.__class__.__name__}"
        if ok and (not was_healthy or not backend.models):
            try:
                await self._discover(backend)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                ok, reason = False, f"/v1/models failed: {exc}"
        backend.checked_at = time.monotonic()
        if ok:
            backend.healthy = True
            backend.last_error = None
        else:
            backend.mark_down(reason or "unhealthy")
        if self.metrics is not None:
            self.metrics.backend_up.labels(backend.name).set(1 if backend.healthy else 0)
        if backend.healthy != was_healthy:
            if backend.healthy:
                log.info("backend %s is up, serving %s", backend.name, ", ".join(backend.models))
            self._changed()

    async def _discover(self, backend: Backend) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=5)
        async with self._session.get(f"{backend.url}/v1/models", headers=backend.auth_headers(), timeout=timeout) as r:
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}")
            cards = orjson.loads(await r.read()).get("data", [])
        served = {
            c["id"]: ServedModel(c["id"], c.get("max_model_len"), c.get("root"))
            for c in cards
            if isinstance(c, dict) and c.get("id")
        }
        wanted = backend.config.models
        if wanted:
            missing = [m for m in wanted if m not in served]
            if missing:
                log.warning("backend %s does not serve %s (it serves %s)", backend.name, missing, list(served))
            served = {m: served.get(m, ServedModel(m)) for m in wanted}
        backend.models = served
        if backend.config.vllm_version:
            backend.vllm_version = backend.config.vllm_version
        else:
            try:
                async with self._session.get(f"{backend.url}/version", timeout=timeout) as r:
                    if r.status == 200:
                        backend.vllm_version = orjson.loads(await r.read()).get("version")
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                backend.vllm_version = None

    async def _read_load(self, backend: Backend) -> None:
        assert self._session is not None
        try:
            async with self._session.get(f"{backend.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return
                text = (await r.read()).decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError, OSError):
            return
        values = _parse_gauges(
            text,
            ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
             "vllm:gpu_cache_usage_perc"),  # the KV cache's name before vLLM 0.10
        )  # fmt: skip
        backend.waiting = int(values.get("vllm:num_requests_waiting", 0))
        backend.running = int(values.get("vllm:num_requests_running", 0))
        backend.kv_usage = values.get("vllm:kv_cache_usage_perc", values.get("vllm:gpu_cache_usage_perc", 0.0))
        if self.metrics is not None:
            self.metrics.backend_waiting.labels(backend.name).set(backend.waiting)
