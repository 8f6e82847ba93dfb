"""The OpenAI-compatible endpoints, and the path every generation request takes.

``generate`` reads top to bottom as the request flows:

    parse -> policy.admit -> router.route -> policy.shape -> proxy.open -> relay -> finish

``finish`` runs once the usage is known (end of a unary answer, or the usage chunk of a
stream): it asks the energy service for the request's joules and policy for its feedback,
and returns what goes back to the caller. The request is recorded in telemetry whatever
happened. A client that goes away cancels the work, which closes the upstream connection
so vLLM aborts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson

from gateway.api.dialect import Dialect
from gateway.api.http import BATCH_IDENTITY, JSON, ClientLeft, Request, encode_headers
from gateway.api.messages import MessagesAnswer
from gateway.api.parts import Parts
from gateway.api.responses import ResponsesAnswer
from gateway.api.validate import SERVICE_TIERS, check_chat, check_completion, check_embedding, parse_json_object
from gateway.context import RequestContext, request_id
from gateway.errors import GatewayError
from gateway.policy.deferral import served_tier
from gateway.policy.keys import Identity
from gateway.proxy.forward import StreamEnd, Upstream, relay

if TYPE_CHECKING:  # the policy module is imported only when policy is on, tracing only when tracing is
    from gateway.policy.plan import Plan
    from gateway.routing.router import Route
    from gateway.telemetry.tracing import RequestTrace

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def header_safe(text: str) -> str:
    """Header values are latin-1: spell out the few symbols our messages use, drop the rest."""
    text = text.replace("₂", "2").replace("≥", ">=").replace("≤", "<=").replace("→", "->").replace("—", "-")
    return text.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")


def _asked_tier(body: dict[str, Any]) -> str:
    """The service tier the client named (checked for chat and completions; embeddings take none)."""
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) and tier in SERVICE_TIERS else "auto"


class _Unshaped:
    """What ``policy.shape`` changes on the context, as it was before: a failover to another
    model restores it and shapes again."""

    __slots__ = ("nudges", "actions", "headers")

    def __init__(self, nudges: int, actions: int, headers: dict[str, str]) -> None:
        self.nudges, self.actions, self.headers = nudges, actions, headers

    @classmethod
    def of(cls, ctx: RequestContext) -> _Unshaped:
        return cls(len(ctx.nudges), len(ctx.actions), dict(ctx.response_headers))

    def restore(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        del ctx.nudges[self.nudges :], ctx.actions[self.actions :]
        ctx.response_headers = dict(self.headers)
        ctx.body = body  # the client's own body again (shape edited the old one)


class DisconnectWatch:
    """Cancel the request's task when its client goes away (after the body has been read).

    Watching needs a task blocked on ``receive()``. Most answers are done within a few
    milliseconds, so the watching task is only started once the request has run for
    ``delay`` seconds; until then a timer is all it costs. A client that left earlier is
    noticed when the watcher starts (``receive()`` reports the disconnect at once), so the
    request is cancelled at most ``delay`` late. ``stop()`` ends the watch; after it the
    task is never cancelled by the watch.
    """

    __slots__ = ("request", "task", "handle", "watcher", "fired", "active")
    delay = 0.01

    def __init__(self, request: Request) -> None:
        self.request = request
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task | None = None
        self.fired = False
        self.active = True
        self.handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self.handle = None
        if self.active:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await self.request.wait_disconnect()
        if self.active and self.task is not None:
            self.fired = True
            self.active = False
            self.task.cancel()

    def stop(self) -> None:
        self.active = False
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None


class OpenAIEndpoints:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    # ------------------------------------------------------------------ endpoints

    async def chat(self, request: Request) -> None:
        await self.generate(request, "chat", "/v1/chat/completions", check_chat)

    async def completions(self, request: Request) -> None:
        await self.generate(request, "completions", "/v1/completions", check_completion)

    async def embeddings(self, request: Request) -> None:
        await self.generate(request, "embeddings", "/v1/embeddings", check_embedding)

    async def responses(self, request: Request) -> None:
        """OpenAI's Responses API, served through the chat path (``api/responses.py``)."""
        await self.generate(request, "chat", "/v1/chat/completions", check_chat, ResponsesAnswer)

    async def messages(self, request: Request) -> None:
        """Anthropic's Messages API, served through the chat path (``api/messages.py``)."""
        await self.generate(request, "chat", "/v1/chat/completions", check_chat, MessagesAnswer)

    async def models(self, request: Request) -> None:
        try:
            self.parts.keys.authenticate(request.headers)  # the same keys as generation (OpenAI: 401)
        except GatewayError as err:
            await request.error(err)
            return
        await request.json(200, {"object": "list", "data": self._cards()})

    async def model(self, request: Request) -> None:
        """``GET /v1/models/{model}``: one served model or alias (``client.models.retrieve``)."""
        try:
            self.parts.keys.authenticate(request.headers)
        except GatewayError as err:
            await request.error(err)
            return
        name = request.path_params["model"]
        card = next((c for c in self._cards() if c["id"] == name), None)
        if card is None:
            missing = GatewayError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
            await request.error(missing)
            return
        await request.json(200, card)

    def _cards(self) -> list[dict[str, Any]]:
        now = int(time.time())
        energy = self.parts.energy
        rated = energy.ratings.ratings() if energy is not None else {}
        models = sorted(self.parts.catalog.models.values(), key=lambda m: (m.rank, m.name))
        data = [m.card(now, rated.get(m.name)) for m in models]
        for alias, target in self.parts.config.routing.aliases.items():
            data.append(
                {"id": alias, "object": "model", "created": now, "owned_by": "nudge-gateway", "alias_of": target}
            )
        return data

    # ------------------------------------------------------------------ the request path

    async def generate(
        self, request: Request, endpoint: str, path: str, check: Callable[[dict], None],
        dialect: type[Dialect] | None = None,
    ) -> None:  # fmt: skip
        ctx: RequestContext | None = None
        watch: DisconnectWatch | None = None
        trace: RequestTrace | None = None
        gw = self.parts
        server = gw.config.server
        gw.metrics.inflight.inc()
        try:
            # Who is calling, from the headers alone: a stranger's body is never read, and a
            # refusal here leaves no trace but a counter (no context, no ledger row).
            try:
                # a batch request (api/batchrun.py) carries its key's identity in the scope, which
                # only the gateway itself builds; everyone else is known by the key they send
                ident = request.scope.get(BATCH_IDENTITY) or gw.keys.caller(request.headers)
            except GatewayError:
                gw.metrics.refused.labels(endpoint, "unauthenticated").inc()
                raise
            if gw.tracing is not None:  # spans from here on (a stranger leaves none either)
                trace = gw.tracing.request(request.headers, endpoint)
            raw = await request.body(server.max_body_bytes, server.body_timeout_s, gw.body_budget)
            # A dialect keeps the client's own body (its answer echoes fields of it) and the chat body
            # is built from a second parse: shaping edits the chat body in place, never the client's.
            answer = dialect(parse_json_object(raw)) if dialect is not None else None

            def upstream_body() -> dict[str, Any]:
                """The client's body as the upstream endpoint takes it (checked; translated by a dialect)."""
                body = parse_json_object(raw)
                body = answer.upstream(body) if answer is not None else body
                check(body)
                return body

            body = upstream_body()
            options = body.get("stream_options") or {}
            ctx = RequestContext(
                request_id=request_id(),
                endpoint=endpoint,
                body=body,
                stream=bool(body.get("stream")),
                include_usage=bool(options.get("include_usage", bool(options))),  # vLLM: {} means on
                api=answer.api if answer is not None else endpoint,
                continuous_usage=bool(options.get("continuous_usage_stats")),
                headers=request.headers,
                requested_model=body.get("model") or "",
                api_key_hash=ident.key_hash,
                key_name=ident.key_name,
                team=ident.team,
                trace=trace,
                service_tier="batch" if BATCH_IDENTITY in request.scope else _asked_tier(body),
            )
            if trace is not None:
                trace.started(ctx)
            # Serve the request, cancelled as soon as the client goes away (as vLLM does).
            watch = DisconnectWatch(request)
            try:
                await self._serve(request, ctx, path, upstream_body, ident, answer)
            finally:
                watch.stop()
        except GatewayError as err:
            if ctx is not None:
                ctx.status, ctx.error_code = err.status, err.code
                if ctx.outcome == "pending":
                    ctx.outcome = "refused" if err.status < 500 else "upstream_error"
            elif trace is not None:
                trace.refused(err.code or err.type, err.status)
            if not request.started:
                headers = {"x-request-id": ctx.request_id} if ctx is not None else {}
                if ctx is not None:
                    headers.update(self._route_headers(ctx))
                await request.error(err, headers, dialect.error_body(err) if dialect is not None else None)
        except ClientLeft:
            gw.metrics.refused.labels(endpoint, "client_left").inc()  # mid-body: never admitted, no row
            if trace is not None:
                trace.refused("client_left")
        except asyncio.CancelledError:
            if ctx is not None:
                ctx.outcome = "client_disconnect"
            if watch is None or not watch.fired:
                raise  # cancelled from outside (server shutdown): let it go on
            if watch.task is not None:
                watch.task.uncancel()  # our own doing: the client left; the request ends here
        finally:
            gw.metrics.inflight.dec()
            try:
                if ctx is not None:
                    await self._record(ctx, trace)
            finally:
                if trace is not None:
                    trace.end(ctx)  # even if recording failed: no span is left open

    async def _record(self, ctx: RequestContext, trace: RequestTrace | None) -> None:
        """The request is over, however it ended: its energy, budgets, ledger row and metrics."""
        gw = self.parts
        if ctx.finished is None:
            ctx.finished = time.monotonic()
        if ctx.status == 0:
            ctx.status = 499 if ctx.outcome == "client_disconnect" else 500
        if trace is not None:
            trace.finishing(ctx)
        energy = gw.energy
        awaiting = energy is not None and ctx.upstream_request_id is not None
        if energy is not None and awaiting and ctx.energy is None:  # stopped before finish()
            energy.end(ctx)  # still account its energy
        if gw.policy is not None:
            await gw.policy.abandon(ctx)  # settles budgets if feedback() never ran; else a no-op
        gw.recorder.finished(ctx, awaiting_energy=awaiting)
        if awaiting:
            ctx.release_inputs()

    async def _serve(
        self, request: Request, ctx: RequestContext, path: str, upstream_body: Callable[[], dict[str, Any]],
        ident: Identity, answer: Dialect | None,
    ) -> None:  # fmt: skip
        gw = self.parts
        policy = gw.policy
        if policy is not None and ctx.trace is not None:
            ctx.trace.step("admit")
        # a flex request waits for the valleys (api/flex.py) once admitted, before it holds budgets
        if policy is not None:
            plan = await policy.admit(ctx, ident, gw.flex.wait)
            ctx.service_tier = plan.service_tier
        else:
            plan, ctx.service_tier = None, served_tier(ctx.service_tier, ctx.endpoint)
            if ctx.service_tier == "flex":
                await gw.flex.wait()
        if ctx.service_tier != "default":
            gw.metrics.deferred.labels(ctx.service_tier).inc()
        requested = plan.model_choice if plan is not None else (ctx.requested_model or "auto")
        route = self._route(ctx, plan, requested)
        unshaped = _Unshaped.of(ctx)
        self._shape(ctx, plan, route)
        try:
            upstream = await self._open(ctx, route, path)
        except GatewayError as err:
            upstream = await self._failover(err, ctx, plan, requested, route, unshaped, upstream_body, path)
        try:
            if ctx.stream:
                await self._relay(request, ctx, upstream, answer)
            else:
                await self._unary(request, ctx, upstream, answer)
        finally:
            upstream.close()

    def _shape(self, ctx: RequestContext, plan: Plan | None, route: Route) -> None:
        policy = self.parts.policy
        if policy is not None and plan is not None and ctx.endpoint != "embeddings":
            if ctx.trace is not None:
                ctx.trace.step("shape")
            policy.shape(ctx, plan, route)

    async def _open(self, ctx: RequestContext, route: Route, path: str) -> Upstream:
        body = self._upstream_body(ctx)
        trace = ctx.trace
        headers = trace.upstream_begin(ctx) if trace is not None else ()  # traceparent: vLLM joins the trace
        try:
            return await self.parts.proxy.open(ctx, route.backends, path, orjson.dumps(body), ctx.stream, headers)
        except GatewayError as err:
            if trace is not None:
                trace.upstream_end(ctx, None, error=err.code or err.type)
            raise

    async def _failover(
        self, err: GatewayError, ctx: RequestContext, plan: Plan | None, requested: str, failed: Route,
        unshaped: _Unshaped, upstream_body: Callable[[], dict[str, Any]], path: str,
    ) -> Upstream:  # fmt: skip
        """Every backend of the routed model failed before sending a byte (503). The router
        falls back ('auto': its pick among what is up; a tier: the nearest healthy tier; a named
        model: the fallbacks configured for it), and the request is shaped anew from the client's
        own body (the new model may be of another family). Raises the last error when there is
        nowhere else to go."""
        unreachable: tuple[str, ...] = (failed.model.name,)
        while err.status == 503 and ctx.endpoint != "embeddings":
            route = self._route(ctx, plan, requested, unreachable)
            if route.model.name in unreachable or not route.backends:
                break
            unshaped.restore(ctx, upstream_body())
            self._shape(ctx, plan, route)
            try:
                return await self._open(ctx, route, path)
            except GatewayError as again:
                err, unreachable = again, (*unreachable, route.model.name)
        raise err

    def _route(
        self, ctx: RequestContext, plan: Plan | None, requested: str, unreachable: tuple[str, ...] = ()
    ) -> Route:
        gw = self.parts
        trace = ctx.trace
        if trace is not None:
            trace.step("route")
        started = time.perf_counter()
        if ctx.endpoint == "embeddings":
            route = gw.router.route_embedding(ctx, requested)
        elif plan is not None:
            friction = plan.large_tiers if plan.friction == "friction" and not plan.override else frozenset()
            route = gw.router.route(
                ctx,
                requested,
                max_tier=plan.max_tier,
                reasoning=plan.reasoning,
                friction_tiers=friction,
                avoid_always_thinking=plan.avoid_always_thinking,
                unreachable=unreachable,
            )
        else:
            route = gw.router.route(ctx, requested, reasoning="reasoning_effort" in ctx.body, unreachable=unreachable)
        gw.metrics.route_seconds.observe(time.perf_counter() - started)
        gw.metrics.c_routes(requested, route.model.name, route.tier, route.reason.split(":")[0]).inc()
        if trace is not None:
            trace.routed(route)
        return route

    def _upstream_body(self, ctx: RequestContext) -> dict[str, Any]:
        body = ctx.body
        body["model"] = ctx.model
        body.pop("service_tier", None)  # the gateway's to act on (api/flex.py), not vLLM's
        if ctx.endpoint == "embeddings":
            return body
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            # vLLM would otherwise generate up to the whole remaining context.
            body["max_tokens"] = self.parts.config.server.default_max_tokens
            ctx.actions.append("max_tokens:default")
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        ctx.max_tokens = cap if isinstance(cap, int) else None
        if ctx.stream:
            # Always ask for the usage chunk and the running usage on every chunk: the gateway
            # needs exact token counts, as they happen, to split energy between requests.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            options["continuous_usage_stats"] = True
            body["stream_options"] = options
        return body

    # ------------------------------------------------------------------ answers

    def _route_headers(self, ctx: RequestContext) -> dict[str, str]:
        headers = {}
        if ctx.model:
            headers["x-gateway-routed-model"] = ctx.model
            headers["x-gateway-route-reason"] = header_safe(ctx.route_reason)
            if ctx.adequacy is not None:
                headers["x-gateway-adequacy"] = f"{ctx.adequacy:.3f}"
        for name, value in ctx.response_headers.items():
            headers[name] = header_safe(value)
        if ctx.nudges:
            headers["x-gateway-nudge"] = header_safe(" | ".join(n.message for n in ctx.nudges))
        return headers

    def _headers(self, ctx: RequestContext) -> dict[str, str]:
        headers = {"x-request-id": ctx.request_id, **self._route_headers(ctx)}
        if ctx.energy is not None:
            headers["x-gateway-energy-j"] = f"{ctx.energy.joules:.3f}"
            headers["x-gateway-energy-source"] = ctx.energy.source
        return headers

    async def _relay(
        self, request: Request, ctx: RequestContext, upstream: Upstream, answer: Dialect | None
    ) -> None:
        ctx.status = 200
        await request.start(200, _SSE_HEADERS + encode_headers(self._headers(ctx)))
        send = request.send
        if answer is not None:
            await send({"type": "http.response.body", "body": answer.start(ctx), "more_body": True})
        trace = ctx.trace
        async with aclosing(relay(ctx, upstream)) as events:
            async for piece in events:
                if isinstance(piece, StreamEnd):  # usage is known: settle, then the finish and usage chunks
                    if trace is not None:
                        trace.stream_ended(piece.held)
                    nudges = await self.finish(ctx)
                    piece = piece.tail(ctx, nudges) if answer is None else answer.end(ctx, piece, nudges)
                elif answer is not None:
                    piece = answer.feed(piece)
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        if trace is not None:
            trace.upstream_end(ctx, upstream.backend.url)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ctx.outcome = "upstream_error" if ctx.upstream_error else "ok"

    async def _unary(
        self, request: Request, ctx: RequestContext, upstream: Upstream, answer: Dialect | None
    ) -> None:
        payload = await upstream.answer(ctx)
        if ctx.trace is not None:
            ctx.trace.upstream_end(ctx, upstream.backend.url, payload.get("choices"))
        nudges = await self.finish(ctx)
        if answer is not None:
            payload = answer.unary(payload, ctx.usage, nudges)
        else:
            if ctx.usage is not None:
                payload["usage"] = ctx.usage
            if nudges:
                payload["nudges"] = nudges
        ctx.status = 200
        ctx.outcome = "ok"
        await request.respond(200, orjson.dumps(payload), JSON, self._headers(ctx))

    async def finish(self, ctx: RequestContext) -> list[dict[str, Any]] | None:
        """Usage is known: account energy, let policy give feedback; the nudges to add to the answer."""
        gw = self.parts
        if ctx.trace is not None:
            ctx.trace.step("finish")
        ctx.finished = time.monotonic()
        usage = ctx.usage
        if ctx.reasoning_parts and ctx.backend is not None:
            await gw.proxy.count_reasoning(ctx, gw.pool.by_name[ctx.backend])
        if isinstance(usage, dict) and ctx.endpoint == "chat":
            details = usage.get("completion_tokens_details") or {}
            details["reasoning_tokens"] = ctx.reasoning_tokens
            usage["completion_tokens_details"] = details
        if gw.energy is not None and ctx.upstream_request_id is not None:
            gw.energy.end(ctx)  # writes ctx.energy
        if gw.policy is not None:
            await gw.policy.feedback(ctx)
        if isinstance(usage, dict) and ctx.energy is not None:
            plan = ctx.policy_plan
            usage["energy"] = ctx.energy.as_dict(show_cost=plan is None or plan.show_cost)
        return [n.as_dict() for n in ctx.nudges] if ctx.nudges else None
