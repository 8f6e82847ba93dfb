"""Social proof with several replicas: each replica's team windows are read back from the shared
PostgreSQL ledger, so a key is compared with its whole team, not with one replica's slice."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.policy.social import SocialWindow
from gateway.telemetry.ledger import Ledger


def row(i: int, key: str, joules: float) -> dict:
    return {"request_id": f"r{i}", "ts": time.time() - 60 + i, "key_name": key, "team": "physics",
            "status": 200, "energy_j": joules, "nudges": []}  # fmt: skip


@pytest.fixture
def replicas(pg_url):
    a, b = Ledger(pg_url, flush_interval_s=0.01, replica="a"), Ledger(pg_url, flush_interval_s=0.01, replica="b")
    yield a, b
    a.close(), b.close()


def test_a_replica_compares_a_key_with_the_requests_other_replicas_served(replicas):
    a, b = replicas
    alone, shared = SocialWindow(), SocialWindow()
    for window in (alone, shared):
        assert window.observe("physics", "bob", 0.1, 50, 3) is None
    a.write(row(0, "bob", 360.0))  # bob's first request, served by replica a
    for i in range(1, 6):
        b.write(row(i, "carol", 36.0))  # carol's, all served by replica b
    a.flush(), b.flush()

    shared.refresh(a)
    for window in (alone, shared):
        window.observe("physics", "bob", 0.1, 50, 3)
    # replica a alone knows only bob: he is his team's median. With the ledger, carol counts too.
    assert alone.observe("physics", "bob", 0.1, 50, 3) == pytest.approx((0.1, 0.1))
    assert shared.observe("physics", "bob", 0.1, 50, 3) == pytest.approx((0.1, 0.01))


def test_the_refresh_loop_survives_a_failing_read_and_keeps_the_last_picture(replicas, caplog):
    a, _ = replicas

    class Flaky:
        calls = 0

        def recent(self, team, window, since):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise OSError("database away")
            return a.recent(team, window, since)

    a.write(row(0, "carol", 36.0))
    a.flush()
    window = SocialWindow()
    window.observe("physics", "bob", 0.1, 50, 1)

    async def run():
        task = asyncio.create_task(window.keep_shared(Flaky(), interval_s=0.01))
        while Flaky.calls < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert "cannot read the shared ledger" in caplog.text
    # the failed read changed nothing; the next one replaced the window with the ledger's (carol's
    # 0.01 Wh), to which bob's new request adds 0.1 Wh
    assert window.observe("physics", "bob", 0.1, 50, 1) == pytest.approx((0.1, 0.055))
