"""Build the gateway from a Config: create the parts, wire them, start and stop them.

The ``Gateway`` object is the ASGI application. It owns every part (no module-level
state), so two gateways can live in one process (the tests do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import TYPE_CHECKING

import aiohttp

from gateway.api.flex import FlexGate
from gateway.api.health import HealthEndpoints
from gateway.api.http import BodyBudget, Handler, Receive, Scope, Send, application
from gateway.api.openai import OpenAIEndpoints
from gateway.api.parts import Parts
from gateway.config import Config
from gateway.context import RequestContext
from gateway.energy.coefficients import DEFAULT_BATCH, TokenCosts
from gateway.policy.keys import KeyRing
from gateway.proxy.backends import BackendPool
from gateway.proxy.forward import Proxy
from gateway.routing.catalog import Catalog
from gateway.routing.router import Router as ModelRouter
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.recorder import Recorder

if TYPE_CHECKING:  # imported when policy (YAML, the policy schema) or tracing (OpenTelemetry) is on
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.api.batchrun import BatchRunner
    from gateway.config import TracingConfig
    from gateway.policy.budgets import BudgetStore
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.store import PolicyStore
    from gateway.telemetry.ledger.jobs import JobStore
    from gateway.telemetry.tracing import Tracing

log = logging.getLogger("gateway")


def _session() -> aiohttp.ClientSession:
    # No connection limit (vLLM queues without limit; the gateway must not add a second
    # queue in front of it); keep-alive so a request costs no new TCP handshake, for less
    # time than vLLM's uvicorn keeps an idle connection (5 s), so we never reuse one it closed.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))


class _EnergyHooks:
    """Tell the energy service when an upstream attempt starts and when it failed."""

    def __init__(self, energy) -> None:
        self.energy = energy

    def sent(self, ctx: RequestContext) -> None:
        self.energy.begin(ctx)

    def failed(self, ctx: RequestContext) -> None:
        self.energy.abandon(ctx)


def _tracing(config: TracingConfig, exporter: SpanExporter | None) -> Tracing:
    """The tracer (OpenTelemetry is imported here and nowhere else); a config error without the extra."""
    try:
        from gateway.telemetry.tracing import Tracing
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise ValueError(
            f"tracing.otlp_endpoint is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install 'nudge-gateway[otel]'"
        ) from exc
    return Tracing(config, exporter)


class Gateway:
    def __init__(self, config: Config, span_exporter: SpanExporter | None = None):
        """``span_exporter``: trace to it (each span as it ends) instead of ``tracing.otlp_endpoint`` (tests)."""
        self.config = config
        features = config.features
        server = config.server
        self.tracing: Tracing | None = None  # off: OpenTelemetry is never imported
        if config.tracing.otlp_endpoint is not None or span_exporter is not None:
            self.tracing = _tracing(config.tracing, span_exporter)  # first: a missing extra starts nothing
        self.metrics = Metrics()
        self.pool = BackendPool(
            config.backends, _session, server.health_interval_s, server.load_interval_s, metrics=self.metrics,
            kv_limit=config.batch.kv_cache_limit,
        )
        self.catalog = Catalog(config.models, self.pool)

        adequacy = None
        if features.routing:
            from gateway.routing.adequacy import AdequacyModel

            path = config.routing.model
            try:
                adequacy = AdequacyModel.load(config.resolve(path) if path else None)
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"routing.model: cannot load {path}: {exc}") from exc
        self.router = ModelRouter(self.catalog, self.pool, config.routing, adequacy, token_price=self._price)
        budget = self.router.budget
        self.metrics.router_price.set_function(lambda: budget.price)
        self.metrics.router_quality.set_function(lambda: 1.0 - budget.recent_loss)
        if adequacy is not None:
            self.metrics.router_info.labels(adequacy.version, f"{1.0 - budget.target:g}").set(1)

        self.ledger = None
        if features.ledger:
            from gateway.telemetry.ledger import Ledger

            lc = config.ledger
            self.ledger = Ledger(
                lc.database_url() or config.resolve(lc.path),
                batch_size=lc.batch_size,
                flush_interval_s=lc.flush_interval_s,
                max_buffered=lc.max_buffered_rows,
                pool_size=lc.pool_size,
            )
            self.metrics.watch_ledger(self.ledger)
        self.recorder = Recorder(self.metrics, self.ledger)

        self.energy = None
        if features.energy:
            from gateway.energy.service import EnergyService

            self.energy = EnergyService(
                config.backends, self.catalog.params_b, self.metrics, self.recorder.final,
                weight_bits=self.catalog.weight_bits,
            )  # fmt: skip
        self.proxy = Proxy(
            _session,
            server.connect_timeout_s,
            server.request_timeout_s,
            metrics=self.metrics,
            hooks=_EnergyHooks(self.energy) if self.energy is not None else None,
        )

        # Who may call: checked by the api from the headers, before a body is read, whether or
        # not policy is on. Bodies being received share one bound of memory.
        self.keys = KeyRing(config.keys)
        self.body_budget = BodyBudget(server.max_buffered_body_bytes)
        self.policy: PolicyEngine | None = None
        self.policy_store: PolicyStore | None = None
        self.budgets: BudgetStore | None = None
        if features.policy:
            self._build_policy()

        self._social: asyncio.Task[None] | None = None
        self.flex = FlexGate(self.pool, config.batch)
        flex = self.flex
        self.metrics.flex_waiting.set_function(lambda: flex.waiting)
        self.jobs: JobStore | None = None
        self.paths = self._paths()
        self.http = application(self.paths, config.server.cors_allow_origins)
        self.batches: BatchRunner | None = None
        if self.jobs is not None and self.ledger is not None:  # the Batch API's runner: lines go through self.http
            from gateway.api.batchrun import BatchRunner

            self.batches = runner = BatchRunner(
                self.jobs, self.http, self.pool, config.batch, self.ledger.replica, self.keys
            )
            self.metrics.batch_inflight.set_function(lambda: runner.inflight)

    def _price(self, model: str) -> float | None:
        """Joules per generated token of ``model`` here, for the router: as measured when energy is on
        (``EnergyService.expected_j_per_token``), else the token-cost model's prior."""
        if self.energy is not None:
            return self.energy.expected_j_per_token(model)
        costs = TokenCosts(self.catalog.params_b(model), weight_bits=self.catalog.weight_bits(model))
        return costs.decode(DEFAULT_BATCH)

    def _build_policy(self) -> None:
        from gateway.policy.budgets import make_budget_store
        from gateway.policy.engine import PolicyEngine
        from gateway.policy.store import PolicyStore, default_policy_path

        ref = self.config.policy
        path = self.config.resolve(ref.path) if ref.path else default_policy_path()
        self.policy_store = PolicyStore(path, self.metrics, watch_interval_s=ref.watch_interval_s)
        self.budgets = budgets = make_budget_store(self.config.budgets)
        self.metrics.budget_deferred.set_function(lambda: budgets.deferred)
        self.policy = PolicyEngine(self.policy_store, self.keys, self.budgets, self.metrics)

    def _paths(self) -> dict[str, dict[str, Handler]]:
        """Every path the gateway serves, with its handler per method."""
        parts = Parts(
            config=self.config, keys=self.keys, body_budget=self.body_budget, policy=self.policy,
            router=self.router, catalog=self.catalog, pool=self.pool, proxy=self.proxy, energy=self.energy,
            recorder=self.recorder, metrics=self.metrics, tracing=self.tracing,
            flex=self.flex,
        )  # fmt: skip
        api = OpenAIEndpoints(parts)
        health = HealthEndpoints(parts)
        paths: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": api.chat},
            "/v1/completions": {"POST": api.completions},
            "/v1/embeddings": {"POST": api.embeddings},
            "/v1/responses": {"POST": api.responses},
            "/v1/messages": {"POST": api.messages},
            "/v1/models": {"GET": api.models},
            "/v1/models/{model:path}": {"GET": api.model},  # model names have slashes
            "/healthz": {"GET": health.healthz},
            "/readyz": {"GET": health.readyz},
            "/metrics": {"GET": health.metrics},
        }
        if self.ledger is not None:
            from gateway.api.batches import BatchEndpoints
            from gateway.api.usage import UsageEndpoint
            from gateway.telemetry.ledger.jobs import JobStore

            paths["/v1/usage"] = {"GET": UsageEndpoint(self.ledger, self.keys)}
            self.jobs = JobStore(self.ledger.store)
            batch = BatchEndpoints(self.jobs, self.keys, self.config.batch, self.body_budget, self.config.server)
            paths["/v1/files"] = {"POST": batch.upload, "GET": batch.list_files}
            paths["/v1/files/{file_id}"] = {"GET": batch.get_file, "DELETE": batch.delete_file}
            paths["/v1/files/{file_id}/content"] = {"GET": batch.file_content}
            paths["/v1/batches"] = {"POST": batch.create, "GET": batch.list_batches}
            paths["/v1/batches/{batch_id}"] = {"GET": batch.get}
            paths["/v1/batches/{batch_id}/cancel"] = {"POST": batch.cancel}
        return paths

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        await self.proxy.start()
        await self.pool.start()
        self.catalog.rebuild()
        if self.policy_store is not None:
            await self.policy_store.start()
        if self.energy is not None:
            self.energy.start()
        if self.batches is not None:
            await self.batches.start()
        if self.policy is not None and self.ledger is not None and self.ledger.shared:
            # several replicas, one ledger: social proof compares a key with its whole team
            self._social = asyncio.create_task(self.policy.social.keep_shared(self.ledger), name="social-proof")
        # Everything built so far (config, policy, the routing model's tables, imported
        # modules) lives as long as the process: move it out of the collector's sight so
        # the full collections that traffic triggers do not walk it again each time.
        gc.collect()
        gc.freeze()
        log.info(
            "gateway ready: %d backend(s), models %s",
            len(self.pool.backends),
            ", ".join(f"{m.name} ({m.tier})" for m in self.catalog.models.values()) or "none yet",
        )

    async def shutdown(self) -> None:
        if self.batches is not None:  # first: its requests go through everything below
            await self.batches.stop()
        if self._social is not None:
            self._social.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._social
        await self.pool.stop()
        await self.proxy.stop()
        if self.policy_store is not None:
            await self.policy_store.stop()
        if self.budgets is not None:
            await self.budgets.close()
        if self.energy is not None:
            self.energy.stop()  # finalises pending requests into the ledger
        try:
            if self.ledger is not None:
                await asyncio.to_thread(self.ledger.close)  # writes what waits: database calls, off the loop
        finally:
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)  # exports the spans still queued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
