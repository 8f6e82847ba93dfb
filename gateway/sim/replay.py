"""The marginal cost of a request: replay the simulator's load without it, offline.

A request's *marginal* cost is what the GPU spent because it came: the energy of the whole load
(idle included, over the same span) minus the energy of the same arrivals without it. It is a
second ground truth beside the simulator's own per-step accounting, and it does not add up: a
request that rides along in a batch that runs anyway costs little at the margin, though it still
takes part of what the batch spends. ``bench/attribution_eval.py`` reports the gateway's figures
against both.

``replay(trace, exclude)`` runs the engine on a plain loop at instant speed: arrivals enter the
queue at their recorded simulated times, steps are priced by a fresh GPU model of the same kind
without noise (noise would differ run to run and swamp small margins), idle gaps are booked at
idle power, and the energy is read at the end of the full load's span.
"""

from __future__ import annotations

from collections.abc import Iterable

from .engine import Engine, Sequence
from .power import GPUS, CostModel, StepModel
from .roofline import RooflineModel


def cost_model(trace: dict) -> StepModel:
    gpu = GPUS[trace["gpu"]]
    if trace["power_model"] == "roofline":
        return RooflineModel(trace["params_b"], trace["gpus"], gpu, trace["model"], trace["seed"], noise=False)
    return CostModel(trace["params_b"], trace["gpus"], gpu)


def replay(trace: dict, exclude: Iterable[str] = (), horizon: float | None = None) -> tuple[float, float]:
    """(joules from time 0 to ``horizon``, time the last request finished) for the trace's arrivals
    without those in ``exclude``; ``horizon`` defaults to that finish time."""
    skip = set(exclude)
    arrivals = sorted((a for a in trace["arrivals"] if a[0] not in skip), key=lambda a: a[1])
    engine = Engine(cost_model(trace), max_model_len=trace["max_model_len"], max_num_seqs=trace["max_num_seqs"],
                    max_num_batched_tokens=trace["max_num_batched_tokens"], kv_capacity=trace["kv_capacity"],
                    speed=None)
    meter, idle_w = engine.meter, engine.cost.idle_watts
    i, last_end = 0, 0.0
    while i < len(arrivals) or engine.waiting or engine.running:
        while i < len(arrivals) and arrivals[i][1] <= engine.v:
            key, at, prompt, target, reason, embed = arrivals[i]
            seq = Sequence(key, prompt, target, reason, embed=embed)
            seq.arrival = at
            engine.records[key] = seq
            engine.waiting.append(seq)
            i += 1
        step = engine._begin_step()
        if step is None:  # nothing to run: idle until the next arrival
            if i >= len(arrivals):
                break
            meter.book(arrivals[i][1], idle_w)
            engine.v = arrivals[i][1]
            continue
        engine._finish_step(*step)
        last_end = engine.v
    end = last_end if horizon is None else horizon
    if end > meter.v_end:
        meter.book(end, idle_w)
    return meter.energy_at(end), last_end


def marginal_costs(trace: dict, keys: Iterable[str]) -> dict[str, float]:
    """Each key's marginal cost: the full replay's energy minus the replay without it, over the full
    load's span (so a request that shortens nothing still saves its own work)."""
    full, span = replay(trace)
    out = {}
    for key in keys:
        without, end = replay(trace, (key,), horizon=span)
        if end > span:  # without it, the rest finished later (rare: scheduling shifted): compare over the longer span
            out[key] = replay(trace, horizon=end)[0] - replay(trace, (key,), horizon=end)[0]
        else:
            out[key] = full - without
    return out
