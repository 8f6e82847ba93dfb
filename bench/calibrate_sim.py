"""Re-derive the vLLM simulator's step-time and power constants from ML.ENERGY v3.

The simulator (``gateway/sim/power.py``) prices one continuous-batching step on one GPU as

    t_step = T0 + T1·P_gpu + T_TP·[tp > 1]                       fixed: launch overhead, weight streaming, all-reduce
           + Σ_decode (C_TOK·P_gpu + C_KV·kv_bytes_gpu·ctx_i)      per running sequence: compute + KV-cache reads
           + Σ_prefill chunk·2·P_gpu·1e9 / F_PREFILL                prompt tokens, compute-bound

    E_step = W_FIXED·t_fixed + W_DECODE·t_decode + W_PREFILL·t_prefill     (per GPU, capped at the power limit)

This script fits T0, T1, T_TP, C_TOK, C_KV on the H100 rows of ML.ENERGY's leaderboard v3
(dense bf16 models whose KV geometry is known: Llama-3.1-8B/70B, Llama-3.3-70B, Qwen3-8B/14B/32B;
tasks lm-arena-chat and gpqa), then W_FIXED and W_DECODE on the same rows' average power.
F_PREFILL and W_PREFILL come from the project's own H200 prefill probe (FACTS.md).
Run it and paste the printed constants into ``gateway/sim/power.py`` if the data changes:

    python bench/calibrate_sim.py [--csv ../shared/mlenergy_v3_llm_configs.csv]

Steady-state assumption (ML.ENERGY measures steady state): with B sequences running and an
average output of L tokens, B/L new requests arrive per step, so each step carries B·prompt/L
prefill tokens. Prompt lengths are not in the table; we assume 256 tokens for both tasks.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "mlenergy_v3_llm_configs.csv"

# (parameters in billions, layers, KV heads); head_dim is 128 for all of them.
ARCHITECTURES = {
    "meta-llama/Llama-3.1-8B-Instruct": (8.03, 32, 8),
    "meta-llama/Llama-3.1-70B-Instruct": (70.6, 80, 8),
    "meta-llama/Llama-3.3-70B-Instruct": (70.6, 80, 8),
    "Qwen/Qwen3-8B": (8.19, 36, 8),
    "Qwen/Qwen3-14B": (14.8, 40, 8),
    "Qwen/Qwen3-32B": (32.8, 64, 8),
}
PROMPT_TOKENS = {"lm-arena-chat": 256, "gpqa": 256}
F_PREFILL = 530e12  # FLOP/s, FACTS.md: 7B prefill 36.2k tok/s, 14B 17.9k tok/s on one H200 (2·P FLOP/token)
W_PREFILL = 690.0  # W, FACTS.md: prefill of 8×1024 tokens draws 713–723 W, i.e. the 700 W cap
ATTENTION = 3.3e-5  # extra prefill cost per context token, relative (4·layers·d_model / 2·P ≈ 6.5e-5 / 2)


def kv_bytes_per_token(layers: int, kv_heads: int) -> float:
    return 2 * layers * kv_heads * 128 * 2  # K and V, bf16


def load(csv_path: Path) -> list[dict]:
    rows = []
    with csv_path.open() as f:
        for r in csv.DictReader(f):
            if r["gpu_model"] != "H100" or r["model_id"] not in ARCHITECTURES or r["task"] not in PROMPT_TOKENS:
                continue
            params, layers, kv_heads = ARCHITECTURES[r["model_id"]]
            tp = int(r["num_gpus"])
            batch = float(r["avg_batch_size"])
            out = float(r["avg_output_len"])
            prompt = PROMPT_TOKENS[r["task"]]
            p_gpu = params / tp
            prefill_tokens = batch * prompt / out
            rows.append(
                {
                    "row": r,
                    "tp": tp,
                    "batch": batch,
                    "p_gpu": p_gpu,
                    "kv_gpu": kv_bytes_per_token(layers, kv_heads) / tp,
                    "ctx": prompt + out / 2,
                    "t_step": batch / float(r["output_throughput_tokens_per_sec"]),
                    "t_prefill": prefill_tokens * 2 * p_gpu * 1e9 / F_PREFILL * (1 + ATTENTION * prompt / 2),
                    "watts_gpu": float(r["avg_power_watts"]) / tp,
                }
            )
    return rows


def fit_time(rows: list[dict]) -> np.ndarray:
    x = np.array(
        [
            [1.0, r["p_gpu"], float(r["tp"] > 1), r["batch"] * r["p_gpu"], r["batch"] * r["kv_gpu"] * r["ctx"]]
            for r in rows
        ]
    )
    y = np.array([r["t_step"] - r["t_prefill"] for r in rows])
    weights = 1.0 / y  # least squares on relative error: small and large batches count alike
    coef, *_ = np.linalg.lstsq(x * weights[:, None], y * weights, rcond=None)
    return coef


def fit_power(rows: list[dict], coef: np.ndarray) -> np.ndarray:
    t0, t1, t_tp, c_tok, c_kv = coef
    a, e = [], []
    for r in rows:
        t_fixed = t0 + t1 * r["p_gpu"] + t_tp * (r["tp"] > 1)
        t_decode = r["batch"] * (c_tok * r["p_gpu"] + c_kv * r["kv_gpu"] * r["ctx"])
        scale = r["t_step"] / (t_fixed + t_decode + r["t_prefill"])  # apportion the measured step time
        energy = r["watts_gpu"] * r["t_step"]
        a.append([t_fixed * scale, t_decode * scale])
        e.append(energy - W_PREFILL * r["t_prefill"] * scale)
    a_arr, e_arr = np.array(a), np.array(e)
    norm = np.array([r["watts_gpu"] * r["t_step"] for r in rows])
    watts, *_ = np.linalg.lstsq(a_arr / norm[:, None], e_arr / norm, rcond=None)
    return watts


def fit_kv_geometry() -> tuple[float, float]:
    """KV bytes per token as a power law of the parameter count (the simulator only knows params)."""
    models = {params: kv_bytes_per_token(layers, kv_heads) for params, layers, kv_heads in ARCHITECTURES.values()}
    slope, intercept = np.polyfit(np.log(list(models)), np.log(list(models.values())), 1)
    return float(np.exp(intercept)), float(slope)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = ap.parse_args()
    rows = load(args.csv)
    coef = fit_time(rows)
    w_fixed, w_decode = fit_power(rows, coef)
    t0, t1, t_tp, c_tok, c_kv = coef
    kv_a, kv_b = fit_kv_geometry()
    print(f"# fitted on {len(rows)} H100 rows of {args.csv.name}")
    print(f"T0 = {t0:.4g}          # s per step")
    print(f"T1 = {t1:.4g}        # s per step per billion parameters on the GPU (weights: {2e9 / t1 / 1e12:.2f} TB/s)")
    print(f"T_TP = {t_tp:.4g}        # s per step with tensor parallelism")
    print(
        f"C_TOK = {c_tok:.4g}      # s per decoding sequence per billion parameters ({2e9 / c_tok / 1e12:.0f} TFLOP/s)"
    )
    print(f"C_KV = {c_kv:.4g}       # s per KV-cache byte read ({1 / c_kv / 1e12:.2f} TB/s)")
    print(f"KV_A, KV_B = {kv_a:.4g}, {kv_b:.4f}   # KV bytes per token = KV_A * params_b ** KV_B")
    print(f"W_FIXED = {w_fixed:.1f}       # W while streaming weights")
    print(f"W_DECODE = {w_decode:.1f}      # W for per-sequence decode work")
    print()
    print(f"{'task':6} {'model':28} tp {'batch':>5} {'t_step ms':>9} {'model':>7} {'W/GPU':>6} {'model':>6}")
    for r in rows:
        t_fixed = t0 + t1 * r["p_gpu"] + t_tp * (r["tp"] > 1)
        t_decode = r["batch"] * (c_tok * r["p_gpu"] + c_kv * r["kv_gpu"] * r["ctx"])
        t = t_fixed + t_decode + r["t_prefill"]
        watts = min(700.0, (w_fixed * t_fixed + w_decode * t_decode + W_PREFILL * r["t_prefill"]) / t)
        print(
            f"{r['row']['task'][:6]:6} {r['row']['model_id'][-28:]:28} {r['tp']:2} {r['batch']:5.0f} "
            f"{r['t_step'] * 1e3:9.2f} {t * 1e3:7.2f} {r['watts_gpu']:6.0f} {watts:6.0f}"
        )


def simulator_table() -> None:
    """What the simulator does with the committed constants (gateway/sim/power.py), on an H200."""
    sys.path.insert(0, str(ROOT))
    from gateway.sim.power import GPUS, W_PREFILL, CostModel

    print("\nsimulated H200 (context 1,000 tokens per sequence): step ms / W per GPU / J per token")
    print(f"{'model':>10} {'prefill tok/s':>13}" + "".join(f" {'batch ' + str(b):>20}" for b in (1, 8, 64, 256)))
    for params, gpus in ((1.7, 1), (8, 1), (14, 1), (32, 1), (70, 4)):
        cost = CostModel(params, gpus, GPUS["h200"])
        cells = []
        for batch in (1, 8, 64, 256):
            t, energy, *_ = cost.price(batch, batch * 1000, [])
            cells.append(f"{t * 1e3:6.1f} {energy / t / gpus:4.0f}W {energy / batch:5.3f}J")
        prefill = 1 / cost.prefill_time(1, 0)  # tokens per second for the whole group (TP splits each token)
        print(f"{f'{params:g}B×{gpus}':>10} {prefill:13,.0f}" + "".join(f" {c:>20}" for c in cells))
    print(f"(prefill at {W_PREFILL:.0f} W; idle {GPUS['h200'].idle_watts:.0f} W per GPU)")


if __name__ == "__main__":
    main()
    simulator_table()
