"""End to end: the gateway in front of two simulators, their DCGM endpoints as meters, real HTTP.

A mixed concurrent load (bench/attribution_eval.py's workload) goes through the gateway while
other clients talk to the simulators directly, and one simulator's energy counter restarts
(a driver reload) mid-run. Then every request's final energy in the ledger is compared with
the simulator's ground truth (GET /debug/energy), once with each of the simulator's GPU models:
the additive one, whose truth shares the attribution's form, and the roofline one, whose does
not. The simulators run at realistic speed: the attribution times prefills and energy-counter
steps in wall-clock seconds, and a simulator running faster than its GPUs would is not a
machine it is built for (at 2x the same run gives p50 ~8 %, p90 ~19 %).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.config import BackendConfig, Config, DcgmMeterConfig, FeaturesConfig, LedgerConfig, ModelConfig, ServerConfig
from gateway.sim.process import start_sim
from tests.support import InProcessGateway

ROOT = Path(__file__).resolve().parents[2]
SPEED = "realistic"
REQUESTS = 48


def load_bench():
    spec = importlib.util.spec_from_file_location("attribution_eval", ROOT / "bench" / "attribution_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def value(metrics, name, **labels):
    return sum(
        s.value
        for metric in metrics.registry.collect()
        for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# Per-request error bounds (p50, p90) for each simulator GPU model. The sweep's worst seeds
# (bench/results/attribution-eval.json, 64 requests each): additive p50 3.7 % / p90 14.3 %,
# roofline 4.3 % / 13.3 %; that is where the accuracy is judged. This run's percentiles move
# more. With 24 requests its p90 was the 3rd-worst request, and the plan holds a few small-model
# requests with a long prompt and a short answer, which the attribution over-charges under the
# roofline model (by 10-37 % in runs on 2026-12-06: it prices their prefill above the roofline's
# truth), so p90 swung with where those landed: 19 runs gave roofline p90 7.7-19.9 %, and a CI run
# 25.2 %. With 48 requests (36 through the gateway, the rest direct), 5 runs of each model on the
# busy 2-core machine gave additive p50 2.2-3.0 % / p90 7.6-13.7 %, roofline p50 1.4-2.2 % /
# p90 5.9-11.5 %. The bounds sit above that spread: this test guards against attribution
# breaking (errors of 30 % and more), not the 5 % / 15 % target one run cannot resolve.
BOUNDS = {"additive": (0.09, 0.22), "roofline": (0.09, 0.25)}


@pytest.fixture(scope="module", params=sorted(BOUNDS))
def run(request, tmp_path_factory):
    bench = load_bench()
    tmp = tmp_path_factory.mktemp("attribution")
    sims = {}
    try:
        for seed, (key, (name, params)) in enumerate(bench.MODELS.items(), start=1):
            sims[key] = start_sim(["--model", name, "--params-b", str(params), "--reasoning", "qwen3",
                                   "--speed", SPEED, "--seed", str(seed), "--power-model", request.param])  # fmt: skip
        config = Config(
            features=FeaturesConfig(routing=False, policy=False),
            server=ServerConfig(health_interval_s=0.5, load_interval_s=0.5),
            backends=[
                BackendConfig(name=key, url=sim.url, models=[bench.MODELS[key][0]],
                              meter=DcgmMeterConfig(type="dcgm", url=f"{sim.url}/dcgm/metrics"))
                for key, sim in sims.items()
            ],  # fmt: skip
            models={name: ModelConfig(params_b=params) for name, params in bench.MODELS.values()},
            ledger=LedgerConfig(path=str(tmp / "usage.db")),
        )
        before = {k: s.energy()["total_j"] for k, s in sims.items()}
        gw = InProcessGateway(config)
        try:
            items = bench.plan(REQUESTS, seed=11)
            # halfway through, the large backend's GPUs "reload their driver": counters restart near zero
            reset = threading.Timer(2.0, sims["large"].reset_counter)
            reset.start()
            ours, direct = asyncio.run(bench.drive(gw.url, sims, items, concurrency=8, direct=0.15, seed=11))
            reset.join()
            time.sleep(1.5)  # idle: nothing runs, the meters keep counting
        finally:
            gw.stop()  # the energy service finalises everything into the ledger, then it closes
        truth = {k: s.energy() for k, s in sims.items()}
        after = {k: t["total_j"] for k, t in truth.items()}
    finally:
        for sim in sims.values():
            sim.stop()
    with sqlite3.connect(tmp / "usage.db") as conn:
        rows = {r[0]: r[1:] for r in conn.execute("SELECT request_id, backend, energy_j, energy_source FROM requests")}
    return {"ours": ours, "direct": direct, "truth": truth, "before": before, "after": after, "rows": rows,
            "metrics": gw.gateway.metrics, "power_model": request.param}  # fmt: skip


def errors(run):
    out = []
    for rid in run["ours"]:
        backend, joules, _ = run["rows"][rid]
        true = sum(r["joules"] for k, r in run["truth"][backend]["requests"].items() if k.startswith(f"{rid}-"))
        out.append(abs(joules - true) / true)
    return sorted(out)


def test_every_request_gets_a_final_measured_value_in_the_ledger(run):
    assert len(run["ours"]) >= 15
    for rid in run["ours"]:
        backend, joules, source = run["rows"][rid]
        assert source == "measured" and joules > 0


def test_per_request_energy_matches_the_simulators_ground_truth(run):
    errs = errors(run)
    p50, p90 = errs[len(errs) // 2], errs[int(0.9 * (len(errs) - 1))]
    max_p50, max_p90 = BOUNDS[run["power_model"]]
    print(f"attribution e2e, {run['power_model']}: p50 {p50:.1%} p90 {p90:.1%}")
    assert p50 <= max_p50 and p90 <= max_p90, f"{run['power_model']}: p50 {p50:.1%} p90 {p90:.1%}"


def test_what_the_meters_measured_is_split_without_loss_across_a_counter_restart(run):
    m = run["metrics"]
    for key in ("small", "large"):
        measured = sum(value(m, "gateway_energy_joules_total", backend=key, kind=k) for k in ("attributed", "idle", "other"))
        sim_total = run["after"][key] - run["before"][key]  # the gateway's whole life, a little more than its meter's
        assert measured == pytest.approx(sim_total, rel=0.05), key
        assert measured <= sim_total * 1.01  # a restart must never be counted twice


def test_idle_is_not_charged_and_other_clients_keep_their_share(run):
    m = run["metrics"]
    ours_total = sum(run["rows"][rid][1] for rid in run["ours"])
    ours_truth = sum(
        r["joules"] for rid in run["ours"] for k, r in run["truth"][run["rows"][rid][0]]["requests"].items()
        if k.startswith(f"{rid}-")
    )  # fmt: skip
    assert ours_total == pytest.approx(ours_truth, rel=0.08)
    idle = sum(value(m, "gateway_energy_joules_total", backend=k, kind="idle") for k in ("small", "large"))
    assert idle > 0
    direct_truth = sum(run["truth"][model]["requests"][rid]["joules"] for rid, model in run["direct"].items())
    other = sum(value(m, "gateway_energy_joules_total", backend=k, kind="other") for k in ("small", "large"))
    if direct_truth:
        assert other == pytest.approx(direct_truth, rel=0.25, abs=50.0)
