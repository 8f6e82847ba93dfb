"""A faithful simulator of vLLM's OpenAI-compatible server, for tests, demos and benchmarks.

It speaks vLLM's HTTP API (by ``--vllm-version``), batches requests on a simulated GPU clock
calibrated on ML.ENERGY measurements, exposes vLLM's ``/metrics`` and a DCGM-style energy
counter, and publishes the per-request energy ground truth at ``/debug/energy``.

- ``python -m gateway.sim --model Qwen/Qwen3-8B --params-b 8 --port 0`` runs one;
- ``start_sim([...])`` (``process.py``) runs one as a subprocess for tests;
- ``add_arguments(parser)`` / ``run(args)`` (``cli.py``) let another CLI expose it.
"""

from .process import SimProcess, start_sim

__all__ = ["SimProcess", "start_sim", "add_arguments", "run"]


def __getattr__(name: str):
    # the server side (uvicorn, prometheus_client) loads only when asked for
    if name in ("add_arguments", "run"):
        from . import cli

        return getattr(cli, name)
    raise AttributeError(name)
