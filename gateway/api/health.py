"""Liveness, readiness and the Prometheus page: the operator's endpoints.

Who may read what (docs/production.md, "Security"):

* ``/healthz``: anyone; it says only ``ok``.
* ``/readyz``: anyone gets ready / not ready (the status code is what probes read); the backend
  details (names, models, queue depth, last error) only an operator.
* ``/metrics`` (key names, teams, costs, budget ratios): only an operator.

An operator is a request on the admin listener (``server.admin_port``, meant to stay inside the
cluster) or, when the gateway takes keys (``keys.required``), one with an ``admin`` key. With no
keys required and no admin port (a private deployment, the demo) everyone is an operator. With an
admin port, ``/metrics`` is served there only: the main port answers 404, so an Ingress in front of
the main port cannot expose it.
"""

from __future__ import annotations

from gateway.api.http import Request
from gateway.api.parts import Parts
from gateway.errors import GatewayError


class HealthEndpoints:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    def on_admin_port(self, request: Request) -> bool:
        port = self.parts.config.server.admin_port
        server = request.scope.get("server")
        return port is not None and server is not None and server[1] == port

    def operator(self, request: Request) -> bool:
        """Whether this request may see the operator's details (raises 401 for a bad key)."""
        if self.on_admin_port(request):
            return True
        keys = self.parts.keys
        if not keys.required:
            return self.parts.config.server.admin_port is None
        return keys.authenticate(request.headers).admin

    async def healthz(self, request: Request) -> None:
        """The process is up and answering."""
        await request.json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> None:
        """Ready only when at least one backend is healthy; the details for operators only."""
        ready = self.parts.pool.any_healthy()
        payload: dict = {"status": "ready" if ready else "not ready"}
        try:
            show = self.operator(request)
        except GatewayError:
            show = False  # a probe with a stale key still gets its status
        if show:
            payload["backends"] = {
                b.name: {"healthy": b.healthy, "models": list(b.models), "waiting": b.waiting, "error": b.last_error}
                for b in self.parts.pool.backends
            }
        await request.json(200 if ready else 503, payload)

    async def metrics(self, request: Request) -> None:
        try:
            if self.parts.config.server.admin_port is not None and not self.on_admin_port(request):
                raise GatewayError(404, f"Unknown path {request.path}", code="unknown_url")
            if not self.operator(request):
                raise GatewayError(403, "Reading metrics needs an admin key.", code="permission_denied")
        except GatewayError as err:
            await request.error(err)
            return
        body, content_type = self.parts.metrics.render()
        await request.respond(200, body, content_type.encode())
