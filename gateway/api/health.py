"""Liveness, readiness and the Prometheus page."""

from __future__ import annotations

from gateway.api.http import Request


class HealthEndpoints:
    def __init__(self, gateway) -> None:
        self.gw = gateway

    async def healthz(self, request: Request) -> None:
        """The process is up and answering."""
        await request.json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> None:
        """Ready only when at least one backend is healthy."""
        backends = {
            b.name: {"healthy": b.healthy, "models": list(b.models), "waiting": b.waiting, "error": b.last_error}
            for b in self.gw.pool.backends
        }
        ready = self.gw.pool.any_healthy()
        await request.json(200 if ready else 503, {"status": "ready" if ready else "not ready", "backends": backends})

    async def metrics(self, request: Request) -> None:
        body, content_type = self.gw.metrics.render()
        await request.respond(200, body, content_type.encode())
