"""The one object that travels with a request through the gateway.

``api`` creates it from the HTTP request, ``policy`` fills in what the policy decided,
``routing`` where the request goes, ``proxy`` what happened upstream, ``energy`` what it
cost, and ``telemetry`` reads it at the end. The fields are grouped by the one stage that
writes them (a failover routes and shapes again: the same stages rewrite their own fields).
Two fields are shared logs rather than fields: ``actions`` and ``response_headers``, which any
stage may append to; and the API completes the ``usage`` dict the proxy stored (reasoning
tokens, energy) as it writes the answer.

It is a plain slotted object: it is created for every request and touched per streamed
chunk (``gen_tokens_seen``), so it must stay cheap.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the context carries the policy's plan and the request's spans; it never calls them
    from gateway.policy.plan import Plan
    from gateway.telemetry.tracing import RequestTrace


# Request ids: the format of ``uuid.uuid4().hex``, made without a system call.
#
# ``uuid4()`` reads 16 bytes from ``os.urandom`` for every request: a ``getrandom`` system
# call that also releases the GIL, so a background thread (energy sampler, ledger writer)
# can take the interpreter for up to a switch interval in the middle of a request. A request
# id needs to be unique, not secret: Python's Mersenne Twister (seeded from ``os.urandom``
# when the process starts, and again in a forked child) gives 128 random bits in ~0.3 µs.
# The version and variant bits are set as uuid4 sets them, so ids look exactly as before.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


def request_id() -> str:
    """32 lower-case hex digits, a valid random (version 4) UUID."""
    return "%032x" % ((_rng.getrandbits(128) & _CLEAR) | _SET)


_NOTHING: Mapping[str, Any] = MappingProxyType({})
DEFERRED_TIERS = frozenset({"flex", "batch"})  # service tiers that wait for room (policy/deferral.py)


@dataclass(slots=True)
class Nudge:
    """A nudge shown to the caller: header ``x-gateway-nudge`` and the ``nudges`` array."""

    id: str  # e.g. "large_model", "reasoning_on", "budget_soft_limit"
    level: str  # "info" | "warn"
    message: str
    saving_hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "level": self.level, "message": self.message, "saving_hint": self.saving_hint}


@dataclass(slots=True)
class EnergyReport:
    """What the caller is told about energy: provisional at response time, final in the ledger."""

    joules: float
    source: str  # "measured-provisional" | "measured" | "estimated"
    co2e_g: float
    usd: float | None = None

    def as_dict(self, show_cost: bool = True) -> dict[str, Any]:
        out = {
            "joules": round(self.joules, 3),
            "wh": round(self.joules / 3600.0, 6),
            "co2e_g": round(self.co2e_g, 4),
            "source": self.source,
        }
        if show_cost and self.usd is not None:
            out["usd"] = round(self.usd, 6)
        return out


@dataclass(slots=True)
class RequestContext:
    # --- api: born from the HTTP request, and how it was answered
    request_id: str
    endpoint: str  # the upstream endpoint: "chat" | "completions" | "embeddings"
    body: dict[str, Any]  # the client's JSON; policy and routing edit the copy sent upstream
    api: str = ""  # the API the client called ("responses" served through "chat"); "" = endpoint
    stream: bool = False
    include_usage: bool = False  # the client asked for the streaming usage chunk
    continuous_usage: bool = False  # ... and for the running usage on every chunk
    received_wall: float = field(default_factory=time.time)
    received: float = field(default_factory=time.monotonic)
    headers: dict[str, str] = field(default_factory=dict)  # request headers, lower-case names
    max_tokens: int | None = None  # the cap sent upstream (the client's, the policy's or the default)
    api_key_hash: str | None = None
    key_name: str | None = None
    team: str = "default"
    finished: float | None = None  # monotonic time the answer was complete (or the request ended)
    status: int = 0  # the HTTP status the client got
    outcome: str = "pending"  # ok | upstream_error | client_disconnect | refused
    error_code: str | None = None
    trace: RequestTrace | None = None  # the request's spans; None: tracing is off
    # what the client asked for ("auto" when it named none; "batch" for a Batch API line), then,
    # once admitted, the tier it is served on: "default" | "flex" | "batch" (the policy may defer)
    service_tier: str = "auto"

    # --- policy
    policy_version: str | None = None
    policy_section: str | None = None
    reasoning: bool = False  # reasoning will run for this request
    reasoning_avoided: bool = False  # policy switched off a model's default thinking
    nudges: list[Nudge] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # a log any stage appends to: "reasoning:off", ...
    response_headers: dict[str, str] = field(default_factory=dict)  # any stage may add one
    policy_plan: Plan | None = None  # the policy's Plan from admit(); feedback() settles its budgets from it

    # --- routing
    requested_model: str = ""
    model: str = ""  # the routed model, as the backend knows it
    route_reason: str = ""
    adequacy: float | None = None
    prompt_tokens_est: int = 0  # the gateway's own count (proxy.prompt_tokens is vLLM's, once known)
    task_class: str = "chat"  # trivial | chat | hard (features.task_class): what reasoning would cost
    counterfactual_model: str | None = None  # what it would have run on without right-sizing

    # --- proxy
    backend: str | None = None
    attempts: int = 0
    upstream_request_id: str | None = None
    sent: float | None = None  # monotonic time the upstream request was sent
    first_byte: float | None = None  # first upstream body byte relayed to the client
    prompt_tokens: int = 0  # exact, from vLLM's running usage in a stream (0: not known yet)
    gen_tokens_seen: int = 0  # tokens streamed so far (read by the energy sampler)
    gen_tokens_exact: bool = False  # ...from vLLM's running usage, else counted one per event
    reasoning_parts: list[str] = field(default_factory=list)  # reasoning text as relayed, to count exactly
    reasoning_tokens: int = 0
    usage: dict[str, Any] | None = None  # vLLM's usage (or, for a stream cut short, what was used)
    upstream_error: str | None = None  # why the answer failed after it started (a stream's error event)

    # --- energy
    energy: EnergyReport | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.received

    def nudge(self, nudge: Nudge) -> None:
        self.nudges.append(nudge)

    def release_inputs(self) -> None:
        """Let go of what only the request path needed, once the request is answered and recorded.

        The energy service keeps the context until the request's joules are final (~2 s under the
        default meter), then hands it to the ledger; neither reads the body, the headers, the
        policy plan, the response headers or the spans. Holding them that long kept ~2 s worth of requests'
        dicts and lists alive, old enough to be promoted, and the collector walked them again and
        again: generation 1 and 2 collections of 4-20 ms under load (bench/NOTES.md).
        """
        self.body = self.headers = self.response_headers = _NOTHING  # type: ignore[assignment]
        self.policy_plan = None
        self.trace = None
