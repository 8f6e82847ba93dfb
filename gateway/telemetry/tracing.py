"""OpenTelemetry traces of the request path (the ``otel`` extra), exported over OTLP/HTTP.

Off unless ``tracing.otlp_endpoint`` is set. Only ``gateway.app`` imports this module, and only
then: a gateway without tracing never imports OpenTelemetry, and its request path pays one
``is not None`` check per step. With tracing on, each request gets a ``RequestTrace``
(``RequestContext.trace``) and the API calls it as the request moves on:

    chat auto           SERVER  the request: from its body being read to its row being recorded
    ├── admit                   policy: identity, reasoning, budget holds
    ├── route                   the router's pick (a failover routes, shapes and goes upstream again)
    ├── shape                   caps and switches for the routed model
    ├── upstream        CLIENT  the call to vLLM (which gets its ``traceparent``); a stream's ends with it
    └── finish                  energy, policy feedback, then the ledger row and the metrics

The root carries the OpenTelemetry GenAI attributes (``gen_ai.*``: the operation, the model asked
for and the one that answered, token usage, finish reasons) and ours (``nudge.*``: routing,
policy, nudges, the energy known when the request finished). Never a prompt or a completion.
An incoming W3C ``traceparent`` is continued. The gateway's own ``TracerProvider`` is used, never
the global one, and a ``BatchSpanProcessor`` exports from its own thread (a bounded queue: spans
beyond it are dropped, not waited for).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.errors import error_type

if TYPE_CHECKING:
    from gateway.config import TracingConfig
    from gateway.context import RequestContext
    from gateway.routing.router import Route

# gen_ai.operation.name for each upstream endpoint (the Responses and Messages APIs are "chat").
_OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_PROVIDER = "vllm"  # gen_ai.provider.name: the servers behind the gateway
_MAX_TEXT = 256  # the longest string a span keeps (the model a client names is unchecked input)
# gen_ai.request.* attributes read from the client's body, when it gives them
_REQUEST_PARAMS = (
    ("gen_ai.request.max_tokens", "max_completion_tokens", int),
    ("gen_ai.request.max_tokens", "max_tokens", int),
    ("gen_ai.request.temperature", "temperature", float),
    ("gen_ai.request.top_p", "top_p", float),
    ("gen_ai.request.seed", "seed", int),
)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: an endpoint given without a path gets the standard ``/v1/traces``."""
    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint


class Tracing:
    """The gateway's tracer: its own provider (tests build several gateways in one process)."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self.provider = TracerProvider(
            # a caller's own sampled flag does not bypass the ratio (each sampled request costs CPU
            # on the loop); its trace id is still continued, and vLLM still gets the context
            sampler=ParentBased(
                TraceIdRatioBased(config.sample_ratio), remote_parent_sampled=TraceIdRatioBased(config.sample_ratio)
            ),
            resource=Resource.create({"service.name": config.service_name, "service.version": __version__}),
            span_limits=SpanLimits(max_attribute_length=_MAX_TEXT),
            shutdown_on_exit=False,  # Gateway.shutdown flushes it
        )
        if exporter is None:  # the default: batches sent over OTLP/HTTP from the processor's thread
            assert config.otlp_endpoint is not None
            otlp = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint), headers=dict(config.headers))
            self.provider.add_span_processor(BatchSpanProcessor(otlp))
        else:  # a test's exporter: each span as it ends
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("gateway", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def request(self, headers: Mapping[str, str], endpoint: str) -> RequestTrace:
        """Start a request's root span, in the caller's trace if its headers carry a ``traceparent``."""
        operation = _OPERATIONS.get(endpoint, endpoint)
        root = self.tracer.start_span(
            operation,
            self.propagator.extract(headers),
            SpanKind.SERVER,
            {"gen_ai.operation.name": operation, "gen_ai.provider.name": _PROVIDER},
        )
        return RequestTrace(self, root)

    def shutdown(self) -> None:
        """Export what is still queued and stop (blocks up to the exporter's timeout)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's spans: the root, the step under way (admit, route, shape, finish; each
    ends when the next begins) and the upstream call, which a stream's finish step overlaps.

    A request left out of the sample has only its root (which records nothing): no child spans
    are made for it, and vLLM gets the root's context, marked not sampled.
    """

    __slots__ = (
        "tracing", "root", "recording", "parent", "step_span", "step_name", "upstream", "tier", "finish_reasons",
        "refusal",
    )  # fmt: skip

    def __init__(self, tracing: Tracing, root: Span) -> None:
        self.tracing = tracing
        self.root = root
        self.recording = root.is_recording()  # sampled
        self.parent = trace.set_span_in_context(root)
        self.step_span: Span | None = None
        self.step_name = ""
        self.upstream: Span | None = None
        self.tier: str | None = None
        self.finish_reasons: list[str] | None = None
        self.refusal: tuple[str, int | None] | None = None  # (error.type, status) before a context existed

    # ------------------------------------------------------------------ the request path

    def started(self, ctx: RequestContext) -> None:
        """The body is read: name the root after the model asked for; what the client asked."""
        if not self.recording:
            return
        attributes: dict[str, Any] = {"nudge.request.id": ctx.request_id, "nudge.api": ctx.api, "nudge.team": ctx.team}
        if ctx.requested_model:
            self.root.update_name(f"{_OPERATIONS.get(ctx.endpoint, ctx.endpoint)} {ctx.requested_model[:_MAX_TEXT]}")
            attributes["gen_ai.request.model"] = ctx.requested_model
        if ctx.stream:
            attributes["gen_ai.request.stream"] = True
        if ctx.key_name:
            attributes["nudge.key.name"] = ctx.key_name
        body = ctx.body
        for attribute, field, kind in _REQUEST_PARAMS:
            value = body.get(field)
            if attribute in attributes or isinstance(value, bool):
                continue
            if isinstance(value, int) or (kind is float and isinstance(value, float)):
                attributes[attribute] = kind(value)
        self.root.set_attributes(attributes)

    def step(self, name: str) -> None:
        """End the step under way and start ``name``."""
        self._end_step()
        self.step_name = name
        if self.recording:
            self.step_span = self.tracing.tracer.start_span(name, self.parent)

    def routed(self, route: Route) -> None:
        """The router picked ``route``: the route step ends with it."""
        self.tier = route.tier
        span = self.step_span
        if span is not None:
            attributes: dict[str, Any] = {"nudge.route.model": route.model.name, "nudge.route.tier": route.tier}
            attributes["nudge.route.reason"] = route.reason
            if route.adequacy is not None:
                attributes["nudge.route.adequacy"] = route.adequacy
            span.set_attributes(attributes)
        self._end_step()

    def upstream_begin(self, ctx: RequestContext) -> list[tuple[str, str]]:
        """The request goes to vLLM: start the upstream span; the headers that carry it there."""
        self._end_step()
        context = self.parent
        if self.recording:
            operation = _OPERATIONS.get(ctx.endpoint, ctx.endpoint)
            attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": _PROVIDER,
                                          "gen_ai.request.model": ctx.model}  # fmt: skip
            if ctx.max_tokens is not None:
                attributes["gen_ai.request.max_tokens"] = ctx.max_tokens  # the cap sent (the policy's, the default)
            self.upstream = self.tracing.tracer.start_span("upstream", context, SpanKind.CLIENT, attributes)
            context = trace.set_span_in_context(self.upstream)
        carrier: dict[str, str] = {}
        self.tracing.propagator.inject(carrier, context)
        return list(carrier.items())

    def upstream_end(
        self, ctx: RequestContext, url: str | None, choices: Sequence[Any] | None = None, error: str | None = None
    ) -> None:
        """vLLM's answer is read (a stream: to its end), or the call failed (``error``, an error.type).
        ``url``: the backend that answered; ``choices``: a unary answer's, for its finish reasons."""
        span, self.upstream = self.upstream, None
        if span is None:
            return
        if choices is not None:
            self.finish_reasons = [c.get("finish_reason") or "" for c in choices if isinstance(c, dict)]
        attributes: dict[str, Any] = {"nudge.upstream.attempts": ctx.attempts}
        if ctx.backend is not None:
            attributes["nudge.backend"] = ctx.backend
        if ctx.upstream_request_id is not None:
            attributes["nudge.upstream.request_id"] = ctx.upstream_request_id  # vLLM's request id
        if url is not None:
            parts = urlsplit(url)
            attributes["server.address"] = parts.hostname or ""
            attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
        if ctx.stream and ctx.first_byte is not None and ctx.sent is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = ctx.first_byte - ctx.sent
            span.add_event("first_chunk", timestamp=_wall_ns(ctx.first_byte))
        span.set_attributes(attributes)
        error = error or ctx.upstream_error
        if error is not None:
            _failed(span, error)
        span.end()

    def stream_ended(self, held: bytes | None) -> None:
        """A stream's usage is known: its finish reasons, from the finish chunk held back for the nudges."""
        if held is None or not self.recording:
            return
        try:
            chunk = orjson.loads(held.partition(b"data:")[2])
        except ValueError:
            return
        self.finish_reasons = [c.get("finish_reason") or "" for c in chunk.get("choices") or () if isinstance(c, dict)]

    def refused(self, error: str, status: int | None = None) -> None:
        """The request ended before it had a context (its body was refused, or never arrived)."""
        self.refusal = (error, status)

    def finishing(self, ctx: RequestContext) -> None:
        """The request is over: the finish step records it (``finish`` began it once usage was
        known; a request that failed begins it here, and its step under way ends failed)."""
        if self.step_name != "finish":
            self._end_step(_error(ctx))
            self.step("finish")

    def end(self, ctx: RequestContext | None) -> None:
        """The request is recorded: end its spans, the root last, with what the request came to."""
        root = self.root
        if self.recording:
            error = _error(ctx) if ctx is not None else (self.refusal[0] if self.refusal else "_OTHER")
            self._end_step()
            if self.upstream is not None and ctx is not None:  # the client left mid-stream, or the answer broke
                self.upstream_end(ctx, None, error=error)
            if ctx is not None:
                root.set_attributes(self._summary(ctx))
            elif self.refusal is not None and self.refusal[1] is not None:
                root.set_attribute("http.response.status_code", self.refusal[1])
            if error is not None:
                _failed(root, error)
        root.end()

    # ------------------------------------------------------------------ helpers

    def _end_step(self, error: str | None = None) -> None:
        span, self.step_span = self.step_span, None
        if span is not None:
            if error is not None:
                _failed(span, error)
            span.end()

    def _summary(self, ctx: RequestContext) -> dict[str, Any]:
        """The root's attributes once the request is over (energy: the provisional figure)."""
        out: dict[str, Any] = {"http.response.status_code": ctx.status, "nudge.outcome": ctx.outcome}
        if ctx.model:
            out["gen_ai.response.model"] = ctx.model
            out["nudge.route.reason"] = ctx.route_reason
            if ctx.adequacy is not None:
                out["nudge.route.adequacy"] = ctx.adequacy
            if self.tier is not None:
                out["nudge.route.tier"] = self.tier
        usage = ctx.usage
        if isinstance(usage, dict):
            for attribute, field in (("gen_ai.usage.input_tokens", "prompt_tokens"),
                                     ("gen_ai.usage.output_tokens", "completion_tokens")):  # fmt: skip
                if isinstance(usage.get(field), int):
                    out[attribute] = usage[field]
        if ctx.reasoning_tokens:
            out["gen_ai.usage.reasoning.output_tokens"] = ctx.reasoning_tokens
        if self.finish_reasons:
            out["gen_ai.response.finish_reasons"] = self.finish_reasons
        if ctx.stream and ctx.first_byte is not None:
            out["gen_ai.response.time_to_first_chunk"] = ctx.first_byte - ctx.received  # as the client saw it
        if ctx.energy is not None:
            out["nudge.energy.joules"] = ctx.energy.joules
            out["nudge.energy.source"] = ctx.energy.source
            out["nudge.energy.co2e_g"] = ctx.energy.co2e_g
        if ctx.policy_version is not None:
            out["nudge.policy.version"] = ctx.policy_version
        if ctx.endpoint == "chat":
            out["nudge.reasoning"] = ctx.reasoning
            if ctx.reasoning_avoided:
                out["nudge.reasoning.avoided"] = True
        if ctx.nudges:
            out["nudge.nudges"] = [n.id for n in ctx.nudges]
        if ctx.actions:
            out["nudge.actions"] = list(ctx.actions)
        return out


def _error(ctx: RequestContext) -> str | None:
    """The request's error.type, None when it was answered in full."""
    if ctx.outcome == "ok" and ctx.status < 400:
        return None
    if ctx.outcome == "client_disconnect":
        return "client_disconnect"
    return ctx.upstream_error or ctx.error_code or error_type(ctx.status)


def _failed(span: Span, error: str) -> None:
    # The error.type alone: an error's message may quote the request, which a trace never holds.
    span.set_attribute("error.type", error)
    span.set_status(StatusCode.ERROR, error)


def _wall_ns(monotonic: float) -> int:
    """A ``time.monotonic()`` instant as the epoch nanoseconds spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)
