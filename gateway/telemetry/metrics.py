"""Every Prometheus metric the gateway exports, in one registry owned by the app.

Labels follow vLLM where they mean the same thing (``model_name`` is the served model name,
exactly as in ``vllm:*`` metrics) so Grafana panels can join the gateway's series with vLLM's.
``key`` is the configured key name (or "anonymous"), never the key itself; ``team`` is the
key's team. Both are bounded by the config, so cardinality stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Request latency buckets (seconds): from sub-millisecond gateway refusals to long generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
# Energy per request (J): a short answer on a small model is ~1 J, a long reasoning answer on a
# large model thousands.
ENERGY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)


class LedgerCounts(Protocol):
    path: str
    written: int
    dropped: int
    write_errors: int

    @property
    def pending(self) -> int: ...


class _LedgerCollector(Collector):
    def __init__(self, ledger: LedgerCounts) -> None:
        self.ledger = ledger

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        ledger = self.ledger
        yield CounterMetricFamily("gateway_ledger_rows_written", "Usage-ledger rows written", value=ledger.written)
        yield CounterMetricFamily(
            "gateway_ledger_rows_dropped",
            "Usage-ledger rows given up: the buffer was full while the database was away, or it was still away "
            "at shutdown (each drop is also logged)",
            value=ledger.dropped,
        )
        yield CounterMetricFamily(
            "gateway_ledger_write_errors",
            "Failed attempts to write a batch of ledger rows (each retried with its rows kept)",
            value=ledger.write_errors,
        )
        yield GaugeMetricFamily(
            "gateway_ledger_rows_pending", "Usage-ledger rows accepted and not written yet", value=ledger.pending
        )


class Children:
    """``metric.labels(*values)``, remembered: prometheus_client's ``labels()`` validates and
    locks on every call (~4 µs); a dict lookup of the same values is ~0.1 µs. Only for label
    sets that are bounded by the config (models, keys, teams, outcomes), never raw input."""

    __slots__ = ("metric", "_cache")

    def __init__(self, metric) -> None:
        self.metric = metric
        self._cache: dict[tuple, object] = {}

    def __call__(self, *values: str):
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        # --- requests
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by routed model and outcome",
            ["model_name", "requested_model", "endpoint", "status", "key", "team"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to last byte sent",
            ["model_name", "endpoint", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request received to the first streamed token relayed",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("gateway_inflight_requests", "Requests being served now", registry=r)
        self.refused = Counter(
            "gateway_refused",
            "Requests refused before admission, which leave no ledger row (unauthenticated: a missing or unknown "
            "key; client_left: gone before its body arrived)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.upstream_attempts = Counter(
            "gateway_upstream_attempts",
            "Upstream attempts by backend and result (ok, connect_error, http_5xx, ...)",
            ["backend", "result"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens by model and kind (prompt, completion, reasoning)",
            ["model_name", "kind", "team"],
            registry=r,
        )

        # --- backends
        self.backend_up = Gauge(
            "gateway_backend_up", "1 when the backend's /health answers 200", ["backend"], registry=r
        )
        self.backend_waiting = Gauge(
            "gateway_backend_requests_waiting", "vllm:num_requests_waiting as last read", ["backend"], registry=r
        )

        # --- routing
        self.routes = Counter(
            "gateway_route_decisions",
            "Routing decisions: requested model or alias -> routed model and its tier",
            ["requested_model", "model_name", "tier", "reason"],
            registry=r,
        )
        self.router_price = Gauge(
            "gateway_router_quality_price",
            "The router's price of quality now (higher: fewer requests go to smaller tiers; see routing/quality.py)",
            registry=r,
        )
        self.router_quality = Gauge(
            "gateway_router_predicted_quality",
            "Share of the top tier's quality that 'auto' requests keep, as the router predicts it, recent average",
            registry=r,
        )
        self.router_info = Gauge(
            "gateway_router_info", "The router model in use (value 1)", ["version", "quality_target"], registry=r
        )
        self.route_seconds = Histogram(
            "gateway_route_decision_seconds",
            "Time spent deciding the route",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01),
            registry=r,
        )

        # --- policy and nudges
        self.nudges = Counter(
            "gateway_nudges", "Nudge decisions by nudge and action taken", ["nudge", "action"], registry=r
        )
        self.policy_reloads = Counter(
            "gateway_policy_reloads", "Policy file reloads by result (ok, invalid)", ["result"], registry=r
        )
        self.policy_info = Gauge(
            "gateway_policy_info", "The policy version in force (value 1)", ["version"], registry=r
        )
        self.reasoning = Counter(
            "gateway_reasoning_requests", "Requests by whether reasoning ran", ["model_name", "reasoning"], registry=r
        )
        self.batch_inflight = Gauge(
            "gateway_batch_requests_inflight", "Batch API requests this replica is running now", registry=r
        )
        self.flex_waiting = Gauge(
            "gateway_flex_waiting", "Requests with service_tier flex waiting for room on the backends", registry=r
        )
        self.budget_deferred = Gauge(
            "gateway_budget_store_deferred_writes",
            "Budget charges waiting for the budget store to be reachable again (replayed in order when it is)",
            registry=r,
        )
        self.budget_used = Gauge(
            "gateway_budget_used_ratio", "Share of a budget used this period", ["scope", "name", "unit"], registry=r
        )
        self.budget_exceeded = Counter(
            "gateway_budget_exceeded",
            "Requests that hit a hard budget limit, by action",
            ["scope", "name", "action"],
            registry=r,
        )

        # --- energy (see gateway.energy)
        self.request_energy = Histogram(
            "gateway_request_energy_joules",
            "GPU energy attributed to each request (final values)",
            ["model_name", "backend", "key", "source"],
            buckets=ENERGY_BUCKETS,
            registry=r,
        )
        self.energy = Counter(
            "gateway_energy_joules",
            "Energy measured per backend, split into attributed (our requests), idle and other (clients we don't see)",
            ["backend", "kind", "source"],  # source: measured | estimated (no meter, or it failed)
            registry=r,
        )
        self.model_energy = Counter(
            "gateway_model_energy_joules",
            "Energy attributed to requests, by model and team",
            ["model_name", "team", "source"],
            registry=r,
        )
        self.gpu_power = Gauge(
            "gateway_gpu_power_watts", "GPU power per backend (all its GPUs)", ["backend"], registry=r
        )
        self.tokens_per_joule = Gauge(
            "gateway_tokens_per_joule", "Generated tokens per joule over the last minute", ["model_name"], registry=r
        )
        self.co2e = Counter(
            "gateway_co2e_grams", "CO2-equivalent of attributed energy", ["model_name", "team"], registry=r
        )
        self.cost = Counter(
            "gateway_cost_usd", "Money the requests cost, by model and team", ["model_name", "team"], registry=r
        )
        self.deferred = Counter(
            "gateway_deferred_requests_total",
            "Requests served on a deferred tier: flex (service_tier, or the policy's default) and batch "
            "(Batch API lines)",
            ["tier"],
            registry=r,
        )
        for tier in ("flex", "batch"):  # exported from the start, at 0
            self.deferred.labels(tier)
        self.energy_saved = Counter(
            "gateway_energy_saved_joules",
            "Estimated counterfactual energy saved: by routing (the same tokens on the model asked for, or the top "
            "tier for auto) and by reasoning off (the reasoning tokens such requests generate on this deployment, "
            "learned from those that reasoned, capped by max_tokens) and by batching (flex and Batch API requests: "
            "their tokens priced at the batch interactive requests run in, less at the batch they ran in)",
            ["model_name", "lever"],
            registry=r,
        )

        self.reasoning_credit_tokens = Counter(
            "gateway_reasoning_credit_tokens",
            "Reasoning tokens the reasoning-off lever credited (an estimate: what such requests reason on this "
            "deployment, by kind of request, capped by max_tokens); gateway_energy_saved_joules prices them",
            ["model_name", "task_class"],
            registry=r,
        )

        # Cached children of the metrics touched by every request (see Children).
        self.c_requests = Children(self.requests)
        self.c_request_duration = Children(self.request_duration)
        self.c_time_to_first_token = Children(self.time_to_first_token)
        self.c_tokens = Children(self.tokens)
        self.c_routes = Children(self.routes)
        self.c_reasoning = Children(self.reasoning)
        self.c_request_energy = Children(self.request_energy)
        self.c_model_energy = Children(self.model_energy)
        self.c_co2e = Children(self.co2e)
        self.c_cost = Children(self.cost)

    def watch_ledger(self, ledger: LedgerCounts) -> None:
        """Export the ledger's own counts, read when Prometheus scrapes (nothing per row)."""
        self.registry.register(_LedgerCollector(ledger))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
