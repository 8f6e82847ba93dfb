"""The gateway's configuration: backends, models, meters, routing, store, keys.

A config comes from a YAML file (``nudge-gateway serve --config gateway.yaml``) or is built
from ``--backend URL`` flags. Unknown keys are errors (a typo must not silently do nothing),
and every error names the field and its position in the file (see ``yamlfile``).

Policies (the nudges) live in their own file, referenced by ``policy.path``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.precision import Precision
from gateway.yamlfile import YamlFileError, load_model, read_yaml


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- meters


class NvmlMeterConfig(Strict):
    """Read the GPUs of this backend with NVML; the gateway must run on the GPU node."""

    type: Literal["nvml"]
    gpus: list[int] = Field(default_factory=lambda: [0], description="NVML device indices the backend uses")
    interval_s: float = Field(0.1, gt=0, le=10, description="power sampling period")


class DcgmMeterConfig(Strict):
    """Scrape a dcgm-exporter (or the simulator's /dcgm/metrics) for the energy counter."""

    type: Literal["dcgm"]
    url: str = Field(description="full URL of the exporter's metrics page")
    select: dict[str, list[str]] = Field(
        default_factory=dict,
        description="label filter, e.g. {gpu: ['0','1']} or {pod: ['vllm-large-0']}; empty = every GPU",
    )
    interval_s: float = Field(0.1, gt=0, le=10)


class EstimateMeterConfig(Strict):
    """No meter: energy is estimated from tokens, model size and batch (labelled 'estimated')."""

    type: Literal["estimate"] = "estimate"
    interval_s: float = Field(0.5, gt=0, le=10)


MeterConfig = Annotated[NvmlMeterConfig | DcgmMeterConfig | EstimateMeterConfig, Field(discriminator="type")]


# ---------------------------------------------------------------- backends and models


_URL = re.compile(r"^https?://[^\s/]+(:\d+)?(/.*)?$")


class BackendConfig(Strict):
    name: str = Field(min_length=1)
    url: str = Field(description="base URL of the vLLM server, without /v1")
    models: list[str] = Field(default_factory=list, description="served model names; empty = discover from /v1/models")
    api_key: str | None = Field(None, description="bearer token the backend expects (vLLM --api-key)")
    gpus: int = Field(1, ge=1, description="GPUs the server uses (tensor parallel size)")
    gpu: str = Field("h200", description="GPU type, for estimates and display")
    vllm_version: str | None = Field(None, description="known vLLM version; else read from /version")
    meter: MeterConfig = Field(default_factory=EstimateMeterConfig)
    grid_g_per_kwh: float = Field(475.0, ge=0, description="grid carbon intensity (CodeCarbon world average)")
    pue: float = Field(1.0, ge=1.0, description="data-centre power usage effectiveness")
    usd_per_gpu_hour: float | None = Field(None, ge=0)
    usd_per_kwh: float | None = Field(None, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.rstrip("/")
        if v.endswith("/v1"):
            v = v[:-3]
        if not _URL.match(v):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8001")
        return v


Reasoning = Literal["hybrid", "always", "effort", "opt_in", "none"]


class ModelConfig(Strict):
    params_b: float | None = Field(None, gt=0, description="parameter count in billions (total)")
    active_params_b: float | None = Field(
        None, gt=0, description="parameters active per token, for a mixture of experts; default: from the name"
    )
    ability: float | None = Field(
        None,
        gt=0,
        description="the size in billions of a Llama-3.1-class model that answers about as well; the router "
        "compares tiers by it. Default: from size and generation (gateway/routing/ability.py)",
    )
    family: str | None = None
    tier: str | None = Field(None, description="tier name; default: from size order")
    reasoning: Reasoning | None = Field(None, description="default: from family")
    max_model_len: int | None = Field(None, gt=0, description="default: from the backend's /v1/models")
    precision: Precision | None = Field(
        None,
        description="weight precision (bf16, fp8, awq, gptq, int4, ...); default: from the name (-FP8, -AWQ, "
        "-GPTQ, -W8A8, ...), else bf16. A quantized deployment of a model is as able as the original unless "
        "ability says otherwise, and cheaper to run: the router prefers it within the tier",
    )


# ---------------------------------------------------------------- the rest


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    admin_port: int | None = Field(
        None, ge=1, le=65535,
        description="a second listener for /metrics and /readyz details, kept inside the cluster; the main port then "
        "answers 404 for /metrics. Without it, /metrics needs an admin key once keys.required is true",
    )  # fmt: skip
    cors_allow_origins: list[str] = Field(
        ["*"],
        description="origins a browser script may call the gateway from (CORS; as vLLM's --allowed-origins, whose "
        "default this is). No credentials are allowed: callers send their key in a header. [] turns CORS off",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="larger request bodies get 413")
    max_buffered_body_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="request bodies all requests may hold at once while they arrive; past it, 503",
    )
    max_connections: int = Field(4096, gt=0, description="open client connections; one more is answered 503 and closed")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this; else disconnected"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this; else 408")
    default_max_tokens: int = Field(1024, gt=0, description="sent upstream when the client sends none")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(900.0, gt=0, description="overall deadline of one upstream request")
    health_interval_s: float = Field(2.0, gt=0)
    load_interval_s: float = Field(1.0, gt=0, description="how often queue depth is read from /metrics")


class RoutingConfig(Strict):
    model: str | None = Field(
        None, description="router artefact from `nudge-gateway router fit`; default: the one shipped in the package"
    )
    quality: float | None = Field(
        None,
        gt=0.5,
        lt=1,
        description="share of the top tier's quality that 'auto' keeps on average over recent requests, as the "
        "router's model predicts it; the router adapts the price of quality to hold it (gateway/routing/quality.py). "
        "Default: the trained model's",
    )
    window: int | None = Field(
        None, ge=1, description="about how many requests the quality average is held over; default: the trained model's"
    )
    threshold: float | None = Field(
        None,
        lt=1,
        description="a fixed threshold instead of the adaptive price: a smaller tier is taken when 1 - predicted "
        "loss / energy saving >= threshold (0.9 = lose at most 10% of a tier's saving in quality)",
    )
    rule: Literal["adequacy", "energy"] | None = Field(
        None,
        description="adequacy: a tier's energy saving is its share of the top tier's joules per token; energy: "
        "also weighted by the expected length of the answer (long answers have more at stake). Default: the "
        "trained model's (the one that saved more energy in training)",
    )
    aliases: dict[str, str] = Field(
        default_factory=lambda: {"auto": "auto", "small": "tier:small", "large": "tier:large"},
        description="client-facing model names: 'auto' routes, 'tier:NAME' picks a tier, else a model name",
    )
    hosted_names: list[str] = Field(
        default_factory=lambda: ["gpt-*", "chatgpt-*", "o1", "o1-*", "o3", "o3-*", "o4-*", "claude-*", "gemini-*"],
        description="patterns (fnmatch) of hosted models' names that tools often hard-code; a request naming one "
        "that no alias or served model matches is routed as 'auto' (the route reason says so). [] makes them 404s",
    )
    tier_fallback: Literal["nearest", "up", "down", "none"] = Field(
        "nearest",
        description="where a request for a tier goes when every backend of the model it was routed to fails "
        "before answering: the nearest healthy tier (the larger of two as near), the nearest above first, the "
        "nearest below first, or (none) nowhere: 503. 'auto' requests are routed again among what is up",
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per client-facing model name, where it may go when every backend of it fails before "
        "answering, in order: model names, 'tier:NAME' or 'auto'. A named model without an entry does not fall back",
    )
    spill: Literal["up", "wait"] = Field("up", description="what a saturated tier does: send up a tier, or queue")
    saturated_waiting: int = Field(8, ge=1, description="vllm:num_requests_waiting at which a backend is saturated")


class LedgerConfig(Strict):
    """Where the usage ledger lives: a SQLite file (one process) or PostgreSQL (shared by replicas)."""

    path: str = Field("nudge-usage.db", description="SQLite file; ':memory:' keeps nothing (unused with url)")
    url: str | None = Field(
        None,
        description="postgresql://user@host:5432/db: one ledger for every replica (needs the postgres extra); "
        "libpq's PGPASSWORD / PGPASSFILE and sslmode work as usual",
    )
    url_env: str | None = Field(
        None, description="the name of an environment variable holding the URL (a Kubernetes Secret as env)"
    )
    batch_size: int = Field(256, gt=0)
    flush_interval_s: float = Field(
        0.01,
        gt=0,
        description="a row is committed at most this long after it is written: what a killed process can lose",
    )
    max_buffered_rows: int = Field(
        131072,
        gt=0,
        description="rows kept in memory while the database is unreachable; beyond, rows are dropped, counted "
        "(gateway_ledger_rows_dropped_total) and logged",
    )
    pool_size: int = Field(4, gt=0, description="PostgreSQL connections per replica for reads (/v1/usage)")

    @model_validator(mode="after")
    def _one_url(self) -> LedgerConfig:
        if self.url is not None and self.url_env is not None:
            raise ValueError("give ledger.url or ledger.url_env, not both")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("ledger.url must be a postgresql:// URL (SQLite takes ledger.path)")
        return self

    def database_url(self) -> str | None:
        """The PostgreSQL URL, from ``url`` or the variable ``url_env`` names; None: SQLite."""
        if self.url_env is None:
            return self.url
        value = os.environ.get(self.url_env, "").strip()
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"ledger.url_env: ${self.url_env} must hold a postgresql:// URL")
        return value


class BatchConfig(Strict):
    """OpenAI's Batch API (``/v1/files``, ``/v1/batches``): deferrable work run in the valleys.

    Files and batches live in the ledger's database (so every replica serves every file and any
    replica resumes a batch whose runner went away); the API is on whenever the ledger is.
    """

    max_file_bytes: int = Field(
        64 * 1024 * 1024, gt=0, le=512 * 1024 * 1024, description="the largest file a client may upload"
    )
    max_owner_bytes: int = Field(
        8 * 1024**3, gt=0,
        description="what one key's uploads that have not expired may hold in all; an upload past it is a 413 "
        "(uploads arriving at the same moment may pass it by one file each)",
    )  # fmt: skip
    max_lines: int = Field(50_000, gt=0, description="requests one batch may hold (OpenAI's limit)")
    max_inflight: int = Field(
        16,
        gt=0,
        description="batch requests one replica runs at once, at most: one goes only while no backend has a "
        "request waiting and every model has a replica with its KV cache below kv_cache_limit (interactive "
        "requests go first)",
    )
    kv_cache_limit: float = Field(
        0.8, gt=0, le=1, description="deferrable work goes to replicas whose KV cache is below this"
    )
    max_running_batches: int = Field(4, gt=0, description="batches one replica works on at once (each holds its input)")
    lease_s: float = Field(
        30.0, gt=1, description="a replica that stops renewing its claim on a batch for this long loses it"
    )
    poll_interval_s: float = Field(1.0, gt=0, description="how often a replica looks for batches to run")
    file_ttl_days: float = Field(30.0, gt=0, description="files expire (and are deleted) this long after upload")
    max_flex_waiting: int = Field(
        256, ge=0, description="requests with service_tier 'flex' that may wait for room at once; more get 429"
    )
    flex_max_wait_s: float = Field(600.0, gt=0, description="the longest a flex request waits for room; then 429")


class TracingConfig(Strict):
    """OpenTelemetry traces (the otel extra); off unless an OTLP endpoint is given."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces; None = off"
    )
    service_name: str = "nudge-gateway"
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, description="share of new traces kept (parent-based)")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every export (auth tokens)")


class ApiKeyConfig(Strict):
    """A client key. Only its SHA-256 is stored: ``sha256:<hex>`` (see ``nudge-gateway hash-key``)."""

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    name: str | None = None
    team: str = "default"
    policy: str | None = Field(None, description="policy section for this key; default: the team's, else default")
    admin: bool = Field(False, description="may read every team's usage in GET /v1/usage (others see their team's)")


class KeysConfig(Strict):
    required: bool = Field(False, description="refuse requests without a known key (401)")
    keys: list[ApiKeyConfig] = Field(default_factory=list)


class PolicyRef(Strict):
    path: str | None = Field(None, description="policy YAML; default: the shipped policies/default.yaml")
    watch_interval_s: float = Field(1.0, gt=0)


class BudgetStoreConfig(Strict):
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "nudge:budget:"
    redis_pool_size: int = Field(100, gt=0, description="Redis connections per gateway; a burst beyond waits for one")
    redis_timeout_s: float = Field(
        2.0, gt=0, description="the longest a Redis call (or the wait for a connection) may take"
    )
    on_store_error: Literal["closed", "open"] = Field(
        "closed",
        description="when the budget store is unreachable: closed = new requests under a budget get 503 with "
        "retry-after; open = they are served unchecked. Either way answers already running finish, and what "
        "they used is charged once the store is back",
    )


class FeaturesConfig(Strict):
    """Switch whole stages off (the overhead benchmark measures what each costs)."""

    routing: bool = Field(True, description="learned right-sizing for 'auto'; off = 'auto' means the largest tier")
    policy: bool = Field(True, description="nudge policies, keys, budgets")
    energy: bool = Field(True, description="per-request energy measurement and attribution")
    ledger: bool = Field(True, description="one usage-ledger row per request (SQLite or PostgreSQL)")


class Config(Strict):
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: list[BackendConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)
    policy: PolicyRef = Field(default_factory=PolicyRef)
    budgets: BudgetStoreConfig = Field(default_factory=BudgetStoreConfig)

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Config:
        seen: set[str] = set()
        for b in self.backends:
            if b.name in seen:
                raise ValueError(f"backend name {b.name!r} is used twice")
            seen.add(b.name)
        return self

    # The config file's directory, so relative paths (policy, ledger) resolve next to it.
    _base_dir: str = PrivateAttr(".")

    def resolve(self, path: str) -> str:
        if path == ":memory:" or Path(path).is_absolute():
            return path
        return str(Path(self._base_dir) / path)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises YamlFileError naming file:line:col per problem."""
    doc = read_yaml(path)
    config = load_model(Config, doc)
    config._base_dir = str(Path(path).resolve().parent)
    return config


def config_from_backends(urls: list[str], **server: Any) -> Config:
    """The config for ``serve --backend URL ...``: models are discovered from each backend."""
    backends = [BackendConfig(name=f"backend{i}", url=url) for i, url in enumerate(urls)]
    return Config(backends=backends, server=ServerConfig(**server))


__all__ = [
    "BackendConfig",
    "Config",
    "ModelConfig",
    "YamlFileError",
    "config_from_backends",
    "load_config",
]
