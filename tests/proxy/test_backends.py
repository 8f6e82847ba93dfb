"""The order in which BackendPool.serving offers a model's replicas: interactive requests to the
least busy (deferrable work counting as one request), deferrable work packed onto the replicas
already running it."""

from __future__ import annotations

from gateway.config import BackendConfig
from gateway.proxy.backends import Backend, BackendPool, ServedModel

MODEL = "m"


def _pool(*loads: tuple[int, int, int]) -> BackendPool:
    """Replicas r0, r1, ... with (requests open, of them deferrable, waiting in vLLM)."""
    pool = BackendPool([BackendConfig(name=f"r{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(len(loads))],
                       session_factory=lambda: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    for backend, (open_, deferred, waiting) in zip(pool.backends, loads):
        backend.healthy = True
        backend.models = {MODEL: ServedModel(MODEL)}
        backend.inflight, backend.deferred, backend.waiting = open_, deferred, waiting
    return pool


def _order(pool: BackendPool, deferred: bool) -> list[str]:
    return [b.name for b in pool.serving(MODEL, deferred=deferred)]


def test_interactive_requests_avoid_a_replica_busy_with_deferrable_work():
    pool = _pool((6, 6, 0), (0, 0, 0))
    assert _order(pool, deferred=False) == ["r1", "r0"]
    # the whole batch counts as one request: with two interactive requests open on r1, r0 is less busy
    pool = _pool((6, 6, 0), (2, 0, 0))
    assert _order(pool, deferred=False) == ["r0", "r1"]


def test_deferrable_work_packs_onto_the_replica_already_running_it():
    pool = _pool((1, 0, 0), (5, 5, 0), (0, 0, 0))
    assert _order(pool, deferred=True) == ["r1", "r2", "r0"]
    # ...unless requests wait there
    pool = _pool((1, 0, 0), (5, 5, 2), (0, 0, 0))
    assert _order(pool, deferred=True) == ["r2", "r0", "r1"]


def test_the_counts_follow_each_request():
    backend = Backend(BackendConfig(name="r", url="http://127.0.0.1:9000"))
    backend.opened(deferred=True)
    backend.opened(deferred=False)
    assert (backend.inflight, backend.deferred) == (2, 1)
    backend.closed(deferred=True)
    backend.closed(deferred=False)
    assert (backend.inflight, backend.deferred) == (0, 0)


def test_unhealthy_or_other_models_replicas_are_not_offered():
    pool = _pool((0, 0, 0), (0, 0, 0))
    pool.backends[0].healthy = False
    pool.backends[1].models = {}
    assert _order(pool, deferred=False) == [] and _order(pool, deferred=True) == []


def test_deferrable_work_leaves_a_full_replica_for_one_with_room():
    pool = _pool((6, 6, 0), (0, 0, 0))
    pool.backends[0].kv_usage = 0.9  # past batch.kv_cache_limit (0.8)
    assert _order(pool, deferred=True) == ["r1", "r0"]


def test_room_for_deferrable_work_needs_every_model_to_have_a_replica_with_room():
    pool = _pool((6, 6, 0), (0, 0, 0))
    other = pool.backends[1]
    pool.backends[0].kv_usage = 0.9
    assert pool.has_room()  # r1 serves the model too and has room
    other.kv_usage = 0.85
    assert not pool.has_room()
    other.kv_usage, other.models = 0.1, {"another": ServedModel("another")}
    assert not pool.has_room()  # r0's model has no replica with room: its deferrable work would go there
    other.models, other.waiting = {MODEL: ServedModel(MODEL)}, 1
    assert not pool.has_room()  # interactive requests waiting anywhere hold deferrable work back
    other.waiting, other.healthy = 0, False
    assert not pool.has_room()
    # a backend whose models are not discovered yet is sent nothing: its KV cache does not count
    other.healthy, other.models, other.kv_usage, pool.backends[0].kv_usage = True, {}, 0.95, 0.1
    assert pool.has_room()
    pool.backends[0].healthy = False
    assert not pool.has_room()  # nothing known to send deferrable work to


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status

    async def read(self) -> bytes:
        return b'{"error": {"message": "no", "type": "x"}}' if self.status >= 400 else b'{"choices": []}'

    async def readany(self) -> bytes:
        return await self.read()

    def release(self) -> None:
        pass

    close = release


class _Client:
    """Each backend URL answers as told: a status, or an exception raised."""

    def __init__(self, answers: dict[str, int | BaseException]) -> None:
        self.answers = answers

    def pool(self, url: str):
        answer = self.answers[url]

        class _Pool:
            async def request(self, *args):
                if isinstance(answer, BaseException):
                    raise answer
                return _Response(answer)

        return _Pool()


def test_every_attempts_counts_are_given_back_whatever_became_of_it():
    import asyncio

    import aiohttp

    from gateway.context import RequestContext
    from gateway.errors import GatewayError
    from gateway.proxy.forward import Proxy

    def attempt(answers: list[int | BaseException], tier: str | None = "flex"):
        pool = _pool(*[(0, 0, 0)] * len(answers))
        proxy = Proxy(lambda: None, 1.0, 5.0)  # type: ignore[arg-type,return-value]
        proxy.client = _Client({b.url: a for b, a in zip(pool.backends, answers)})  # type: ignore[assignment]
        ctx = RequestContext(request_id="r", endpoint="chat", body={}, stream=False)
        ctx.service_tier, ctx.model = tier, MODEL

        async def run():
            try:
                upstream = await proxy.open(ctx, pool.backends, "/v1/chat/completions", b"{}")
            except (GatewayError, asyncio.CancelledError) as exc:
                return exc, None
            held = [(b.inflight, b.deferred) for b in pool.backends]
            upstream.close()
            return None, held

        failure, held = asyncio.run(run())
        assert [(b.inflight, b.deferred) for b in pool.backends] == [(0, 0)] * len(answers)
        return failure, held

    # refused, then a 5xx, then answered: only the one that answered holds the request until closed
    failure, held = attempt([aiohttp.ClientConnectionError("refused"), 500, 200])
    assert failure is None and held == [(0, 0), (0, 0), (1, 1)]
    failure, held = attempt([aiohttp.ClientConnectionError("refused"), 500, 200], tier="default")
    assert held == [(0, 0), (0, 0), (1, 0)]  # an interactive request is not deferred work
    assert isinstance(attempt([400, 200])[0], GatewayError)  # refused as such: no failover, nothing held
    assert isinstance(attempt([503, 502])[0], GatewayError)  # every backend failed
    assert isinstance(attempt([asyncio.CancelledError()])[0], asyncio.CancelledError)  # the client left
