"""Record a finished request: Prometheus metrics and its ledger row now, the row again once
its energy is final.

The energy of a request is final only when the meter has moved past its end (up to a couple
of seconds later). Its row is written as soon as it finishes, with the provisional energy
(source ``measured-provisional``), and written again (the ledger upserts by request id) when
the energy service calls ``final`` from its thread: a process killed in between loses only
the final figure, never the row.
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.telemetry.metrics import Metrics


class Recorder:
    def __init__(self, metrics: Metrics, ledger=None):
        self.metrics = metrics
        self.ledger = ledger

    def finished(self, ctx: RequestContext, awaiting_energy: bool) -> None:
        m = self.metrics
        model = ctx.model or "-"
        key = ctx.key_name or "anonymous"
        requested = ctx.requested_model if ctx.model else "-"  # never label with unvalidated input
        m.c_requests(model, requested or "-", ctx.api or ctx.endpoint, str(ctx.status), key, ctx.team).inc()
        if ctx.finished is not None:
            m.c_request_duration(model, ctx.api or ctx.endpoint, "true" if ctx.stream else "false").observe(
                ctx.finished - ctx.received
            )
        if ctx.stream and ctx.first_byte is not None:
            m.c_time_to_first_token(model).observe(ctx.first_byte - ctx.received)
        usage = ctx.usage
        if usage:
            m.c_tokens(model, "prompt", ctx.team).inc(usage.get("prompt_tokens") or 0)
            m.c_tokens(model, "completion", ctx.team).inc(usage.get("completion_tokens") or 0)
            if ctx.reasoning_tokens:
                m.c_tokens(model, "reasoning", ctx.team).inc(ctx.reasoning_tokens)
        if ctx.model and ctx.endpoint == "chat" and ctx.status == 200:
            m.c_reasoning(model, "on" if ctx.reasoning_tokens else "off").inc()
        self._write(ctx, final=not awaiting_energy)  # provisional energy: final() writes the row again

    def final(self, ctx: RequestContext) -> None:
        """The energy service calls this (from its thread) once a request's energy is final."""
        self._write(ctx)

    def _write(self, ctx: RequestContext, final: bool = True) -> None:
        if self.ledger is not None:
            self.ledger.write(self.ledger.row_from_context(ctx, final))
