"""Fixtures for the whole suite: simulators and gateways started as real processes on loopback.

Unit tests use none of them. ``tests/sim`` starts simulators with ``start`` (module scope) or
shares ``qwen`` / ``plain``; end-to-end tests (``tests/e2e``) share ``sims`` (three tiers) and
``gateway`` (the shipped default policy in front of them). Helpers that are not fixtures live in
``tests/support.py``.
"""

from __future__ import annotations

import pytest

from gateway.sim.process import start_sim
from tests.sim.helpers import MODEL
from tests.support import LARGE, MEDIUM, SMALL, SPEED, GatewayProcess, backend_entry, base_config, write_config

# ---------------------------------------------------------------- simulators (tests/sim)


class Starter:
    """``start(*args)`` starts a simulator (``--model`` defaults to Qwen3-8B) and stops it with the fixture."""

    def __init__(self) -> None:
        self.started = []

    def __call__(self, *args: str):
        argv = list(args)
        if "--model" not in argv:
            argv = ["--model", MODEL, "--params-b", "8", *argv]
        sim = start_sim(argv)
        self.started.append(sim)
        return sim

    def stop_all(self) -> None:
        for sim in self.started:  # signal them all first: they shut down in parallel
            if sim.alive:
                sim.proc.terminate()
        for sim in self.started:
            sim.stop()


@pytest.fixture(scope="module")
def start():
    starter = Starter()
    yield starter
    starter.stop_all()


@pytest.fixture(scope="session")
def shared_sims():
    starter = Starter()
    yield starter
    starter.stop_all()


@pytest.fixture(scope="session")
def qwen(shared_sims):
    """Qwen3-8B with the qwen3 reasoning parser, vLLM 0.16, 50× faster than real time (shared: use deltas)."""
    return shared_sims("--reasoning", "qwen3", "--speed", "50")


@pytest.fixture(scope="session")
def plain(shared_sims):
    """A non-reasoning 8B model, vLLM 0.16, 50× faster than real time (shared: use deltas)."""
    return shared_sims("--model", "meta-llama/Llama-3.1-8B-Instruct", "--params-b", "8", "--speed", "50")


# ---------------------------------------------------------------- three tiers and a gateway (tests/e2e)


@pytest.fixture(scope="session")
def sims():
    started = []
    try:
        for name, params, reasoning, seed in (
            (SMALL, 1.7, "qwen3", 1),
            (MEDIUM, 8, "none", 2),
            (LARGE, 32, "qwen3", 3),
        ):
            started.append(
                start_sim(
                    [
                        "--model",
                        name,
                        "--params-b",
                        str(params),
                        "--reasoning",
                        reasoning,
                        "--speed",
                        SPEED,
                        "--seed",
                        str(seed),
                        "--enable-auto-tool-choice",  # as make demo starts them
                        "--tool-call-parser",
                        "hermes",
                    ]
                )
            )
        yield dict(zip((SMALL, MEDIUM, LARGE), started))
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture(scope="session")
def gateway(sims, tmp_path_factory):
    """One gateway with the shipped default policy in front of the three simulators."""
    tmp = tmp_path_factory.mktemp("gw")
    backends = [backend_entry(n.split("/")[-1].lower(), s) for n, s in sims.items()]
    path = write_config(tmp, base_config(tmp, backends))
    with GatewayProcess(path) as gw:
        yield gw


# ---------------------------------------------------------------- PostgreSQL (the shared ledger)


@pytest.fixture
def pg_url(request):
    """A fresh, empty PostgreSQL database for one test (dropped after it)."""
    import uuid

    from tests.support import pg_database, pg_drop

    name = f"nudge_test_{uuid.uuid4().hex[:12]}"
    url = pg_database(name)
    yield url
    pg_drop(name)
