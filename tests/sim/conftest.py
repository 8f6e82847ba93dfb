"""Fixtures: simulators started as real processes on loopback (module scope, stopped after)."""

from __future__ import annotations

import pytest

from gateway.sim.process import start_sim

from .helpers import MODEL


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
