"""Budget counters, in memory and in the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from gateway.config import BudgetStoreConfig
from gateway.policy.budgets import MemoryBudgetStore, RedisBudgetStore, make_budget_store, period_window

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[2]


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    "period, now, pid, start, end",
    [
        ("day", "2026-11-28T13:45:00", "2026-11-28", "2026-11-28T00:00:00", "2026-11-29T00:00:00"),
        ("day", "2026-12-31T23:59:59", "2026-12-31", "2026-12-31T00:00:00", "2027-01-01T00:00:00"),
        ("week", "2026-11-28T13:45:00", "2026-W48", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # a Saturday
        ("week", "2026-11-30T00:00:00", "2026-W49", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),  # Monday 00:00
        ("week", "2027-01-01T08:00:00", "2026-W53", "2026-12-28T00:00:00", "2027-01-04T00:00:00"),  # ISO year
        ("month", "2026-12-15T00:00:00", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2028-02-29T23:00:00", "2028-02", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_periods_are_utc_calendar_periods(period, now, pid, start, end):
    assert period_window(period, ts(now)) == (pid, ts(start), ts(end))


def test_make_budget_store_from_config():
    assert isinstance(make_budget_store(BudgetStoreConfig()), MemoryBudgetStore)
    assert isinstance(make_budget_store(None), MemoryBudgetStore)


# ---------------------------------------------------------------- both stores


@pytest.fixture
def prefix():
    p = f"test:budget:{uuid.uuid4().hex[:10]}:"
    yield p
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=p + "*"))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
async def store(request, prefix):
    if request.param == "memory":
        s = MemoryBudgetStore(prefix)
    else:
        try:
            redis.Redis.from_url(REDIS_URL).ping()
        except redis.ConnectionError:
            pytest.fail("the Redis tests need redis-server on 127.0.0.1:6379 (.ci/run starts it)")
        s = RedisBudgetStore(REDIS_URL, prefix)
    yield s
    await s.close()


async def test_requests_budget_admits_exactly_the_limit(store):
    now = time.time()
    for i in range(3):
        r, state = await store.reserve("team", "physics", "requests", 3, "day")
        assert r is not None and state.admitted
        await store.settle(r, 1)
    r, state = await store.reserve("team", "physics", "requests", 3, "day")
    assert r is None and not state.admitted and state.exhausted
    assert state.used == 3 and state.ratio == 1.0
    _, _, end = period_window("day", now)
    assert state.resets_at == end
    assert abs(state.retry_after_s() - (end - time.time())) <= 1.5
    # other names and units are separate counters
    assert (await store.reserve("team", "chemistry", "requests", 3, "day"))[0] is not None
    assert (await store.reserve("team", "physics", "tokens", 3, "day"))[0] is not None


async def test_reservations_hold_budget_until_settled_or_released(store):
    held = [(await store.reserve("key", "alice", "requests", 2, "week"))[0] for _ in range(2)]
    assert all(held)
    r, state = await store.reserve("key", "alice", "requests", 2, "week")
    assert r is None and not state.exhausted and state.reserved == 2  # in flight only: a retry may fit
    await store.release(held[0])
    r, _ = await store.reserve("key", "alice", "requests", 2, "week")
    assert r is not None
    state = await store.check("key", "alice", "requests", 2, "week")
    assert state.used == 0 and state.reserved == 2


async def test_settle_charges_actual_amount_and_learns_the_largest_request(store):
    r, _ = await store.reserve("team", "t", "wh", 10.0, "month", estimate=0.5)
    assert r.amount == 0.5
    state = await store.settle(r, 2.5)
    assert state.used == pytest.approx(2.5) and state.reserved == 0 and state.ratio == pytest.approx(0.25)
    r2, _ = await store.reserve("team", "t", "wh", 10.0, "month", estimate=0.0)
    assert r2.amount == pytest.approx(2.5)  # unknown size: reserve the largest seen
    r3, _ = await store.reserve("team", "t", "wh", 10.0, "month", estimate=4.0)
    assert r3.amount == pytest.approx(4.0)


async def test_charge_without_reservation(store):
    state = await store.charge("team", "t", "usd", 1.25, 5.0, "month")
    state = await store.charge("team", "t", "usd", 1.25, 5.0, "month")
    assert state.used == pytest.approx(2.5) and state.ratio == pytest.approx(0.5)
    assert (await store.check("team", "t", "usd", 5.0, "month")).used == pytest.approx(2.5)


async def test_next_period_starts_from_zero(store):
    day1 = ts("2031-03-10T23:59:00")
    r, _ = await store.reserve("team", "t", "requests", 1, "day", now=day1)
    assert r is not None
    assert (await store.reserve("team", "t", "requests", 1, "day", now=day1 + 30))[0] is None
    assert (await store.reserve("team", "t", "requests", 1, "day", now=day1 + 120))[0] is not None  # next day
    assert (await store.check("team", "t", "requests", 1, "day", now=day1 + 120)).reserved == 1


async def test_leases_of_dead_holders_expire(store):
    store.lease_s = 0.05
    r, _ = await store.reserve("team", "t", "requests", 1, "day")
    assert r is not None  # ... and its holder dies without settling
    assert (await store.reserve("team", "t", "requests", 1, "day"))[0] is None
    await asyncio.sleep(0.1)
    assert (await store.reserve("team", "t", "requests", 1, "day"))[0] is not None


async def test_concurrent_tasks_do_not_overspend(store):
    """Many concurrent requests on one budget: requests exact, Wh at most one request over."""
    limit, admitted = 25, 0

    async def client():
        nonlocal admitted
        while True:
            r, state = await store.reserve("team", "busy", "requests", limit, "day")
            if r is None:
                if state.exhausted:
                    return
                await asyncio.sleep(0.001)
                continue
            await asyncio.sleep(random.uniform(0, 0.003))
            await store.settle(r, 1)
            admitted += 1

    await asyncio.gather(*(client() for _ in range(12)))
    assert admitted == limit
    assert (await store.check("team", "busy", "requests", limit, "day")).used == limit

    wh_limit, biggest = 20.0, 1.0
    first, _ = await store.reserve("team", "busy", "wh", wh_limit, "day")
    await store.settle(first, biggest)  # the store learns how large a request gets

    async def wh_client():
        while True:
            r, state = await store.reserve("team", "busy", "wh", wh_limit, "day")
            if r is None:
                if state.exhausted:
                    return
                await asyncio.sleep(0.001)
                continue
            await asyncio.sleep(random.uniform(0, 0.003))
            await store.settle(r, random.uniform(0.2, biggest))

    await asyncio.gather(*(wh_client() for _ in range(12)))
    used = (await store.check("team", "busy", "wh", wh_limit, "day")).used
    assert wh_limit <= used <= wh_limit + biggest


# ---------------------------------------------------------------- Redis only


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("the Redis tests need redis-server on 127.0.0.1:6379 (.ci/run starts it)")
    yield client
    client.close()


async def test_redis_keys_expire_at_the_period_end(prefix, redis_client):
    store = RedisBudgetStore(REDIS_URL, prefix)
    r, _ = await store.reserve("team", "physics", "wh", 5.0, "day")
    await store.settle(r, 0.5)
    keys = sorted(redis_client.scan_iter(match=prefix + "*"))
    _, _, end = period_window("day", time.time())
    counter = next(k for k in keys if k.endswith(time.strftime("%Y-%m-%d", time.gmtime())))
    assert counter == f"{prefix}{{team:physics:wh:day}}:{time.strftime('%Y-%m-%d', time.gmtime())}"
    assert abs(redis_client.ttl(counter) - (end - time.time())) <= 2
    assert redis_client.hget(counter, "used") == "0.5"
    peak = f"{prefix}{{team:physics:wh:day}}:peak"
    assert 0 < redis_client.ttl(peak) <= 2 * 86400
    # a request admitted in a period that has ended meanwhile: its settle must not revive it
    past = ts("2020-01-01T12:00:00")
    old, _ = await store.reserve("team", "physics", "wh", 5.0, "day", now=past)
    assert redis_client.exists(old.key) == 0  # EXPIREAT in the past deletes at once
    await store.settle(old, 1.0)
    assert redis_client.exists(old.key) == 0
    await store.close()


async def test_two_processes_share_one_budget_without_overspending(prefix):
    """Two gateway processes, 8 concurrent requests each, one Redis budget."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = str(Path(__file__).with_name("budget_worker.py"))

    def run_pair(unit: str, limit: float, max_amount: float, estimate: float) -> list[dict]:
        start_at = time.time() + 1.5  # both interpreters are up by then
        args = [REDIS_URL, prefix, unit, str(limit), str(max_amount), str(estimate), str(start_at), "8"]
        procs = [subprocess.Popen([sys.executable, worker, *args], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        out = []
        for p in procs:
            stdout, _ = p.communicate(timeout=60)
            assert p.returncode == 0
            out.append(json.loads(stdout))
        return out

    store = RedisBudgetStore(REDIS_URL, prefix)

    # requests: never over the limit
    # (which process gets how much is a race: only the total is guaranteed)
    results = run_pair("requests", 150, 1, 1)
    assert sum(r["admitted"] for r in results) == 150
    assert (await store.check("team", "shared", "requests", 150, "day")).used == 150

    # tokens, reserving each request's upper bound as the engine does: at most one request over
    results = run_pair("tokens", 20000, 400, 400)
    used = (await store.check("team", "shared", "tokens", 20000, "day")).used
    assert used == pytest.approx(sum(r["charged"] for r in results))
    assert 20000 <= used <= 20000 + 400

    # Wh, unknown before a request runs: the store reserves the largest request seen
    seed, _ = await store.reserve("team", "shared", "wh", 30.0, "day")
    await store.settle(seed, 1.0)
    results = run_pair("wh", 30.0, 1.0, 0.0)
    used = (await store.check("team", "shared", "wh", 30.0, "day")).used
    assert max(r["largest"] for r in results) <= 1.0
    assert 30.0 <= used <= 30.0 + 1.0
    await store.close()


# ---------------------------------------------------------------- Redis outages


class Forwarder:
    """A TCP relay to the real Redis that can be cut and restored, on one fixed port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers += [writer, up_writer]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_redis_pool_smaller_than_a_burst_waits_instead_of_failing(prefix):
    store = RedisBudgetStore(REDIS_URL, prefix, pool_size=2, timeout_s=5.0)
    try:
        results = await asyncio.gather(*(store.reserve("team", "t", "requests", 1000) for _ in range(60)))
        assert all(r is not None for r, _ in results)
    finally:
        await store.close()


async def test_settles_during_an_outage_are_replayed_in_order_when_redis_is_back(prefix, caplog):
    from gateway.policy.budgets import StoreUnavailable
    from tests.support import free_port

    port = free_port()
    relay = Forwarder(port)
    await relay.start()
    store = RedisBudgetStore(f"redis://127.0.0.1:{port}/0", prefix, timeout_s=0.5)
    try:
        r, _ = await store.reserve("team", "t", "tokens", 1000, estimate=100)
        await relay.cut()
        with pytest.raises(StoreUnavailable) as err:
            await store.settle(r, 40)  # what the request used must not be lost
        assert err.value.deferred and store.deferred == 1
        with pytest.raises(StoreUnavailable) as err:
            await store.charge("team", "t", "tokens", 2, 1000)
        assert err.value.deferred and store.deferred == 2
        with pytest.raises(StoreUnavailable) as err:
            await store.check("team", "t", "tokens", 1000)  # nothing to defer: the caller decides
        assert not err.value.deferred
        await relay.start()
        state = await store.check("team", "t", "tokens", 1000)  # the first call that works replays
        for _ in range(50):
            if store.deferred == 0:
                break
            await asyncio.sleep(0.02)
        assert store.deferred == 0
        state = await store.check("team", "t", "tokens", 1000)
        assert state.used == 42 and state.reserved == 0
        outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_logs) == 1  # once per outage, however many calls failed
    finally:
        await relay.cut()
        await store.close()
