"""What the API layer works with: one typed field per part of the gateway.

``gateway.app.Gateway`` builds the parts and hands the endpoints a ``Parts``; an endpoint reaches
policy, routing, the proxy, energy and telemetry through these fields and nothing else, so a
reader (and mypy) can follow a request from the API into each stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # policy, energy and tracing are imported only when they are switched on
    from gateway.api.flex import FlexGate
    from gateway.api.http import BodyBudget
    from gateway.config import Config
    from gateway.energy.service import EnergyService
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.keys import KeyRing
    from gateway.proxy.backends import BackendPool
    from gateway.proxy.forward import Proxy
    from gateway.routing.catalog import Catalog
    from gateway.routing.router import Router
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.recorder import Recorder
    from gateway.telemetry.tracing import Tracing


@dataclass(frozen=True, slots=True)
class Parts:
    config: Config
    keys: KeyRing  # who may call (checked from the headers, before a body is read)
    body_budget: BodyBudget  # the bytes of request bodies all requests may hold at once
    policy: PolicyEngine | None  # None: features.policy is off
    router: Router
    catalog: Catalog
    pool: BackendPool
    proxy: Proxy
    energy: EnergyService | None  # None: features.energy is off
    recorder: Recorder
    metrics: Metrics
    tracing: Tracing | None  # None: tracing is off (OpenTelemetry is never imported)
    flex: FlexGate  # where service_tier "flex" requests wait for room
