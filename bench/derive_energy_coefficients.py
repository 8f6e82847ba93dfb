"""Re-derive the token-cost constants of ``gateway/energy/coefficients.py`` from the data.

    python bench/derive_energy_coefficients.py [--csv ../shared/mlenergy_v3_llm_configs.csv] [--check]

Decode: least squares on relative error over the dense bf16 H100 rows of ML.ENERGY leaderboard
v3 (tasks lm-arena-chat and gpqa), model

    J/token = STEP0/B + STEP_N·N/B + STEP_TP·(g-1)/B + TOK·N + KV·N^KV_EXP·ctx  (+ prefill share)

with B = avg_batch_size, N = total_params_billions, g = num_gpus, ctx = 256 + avg_output_len/2
and a prefill share of e_pre(N)·256/avg_output_len removed first (the table has no prompt
lengths; 256 tokens is assumed for both tasks). KV_EXP comes from the KV-cache geometry of the
Llama-3.1 and Qwen3 models in the table.

Prefill: a power law through the H200 probe of FACTS.md (1.5B-32B; the 0.5B point is launch
overhead, not compute), and ATTN = 4·layers·d_model / (2·N) averaged over the probe's shapes.

``--check`` compares with the constants in the code and exits 1 if one moved by more than 1 %.

``--precision`` checks the weight-bits term (an FP8 deployment streams half the bytes) against
ML.ENERGY's FP8 rows: each FP8 row against the bf16 rows of the same model, task, GPU and
``max_num_seqs``, measured J/token ratio against the model's, grouped by whether the FP8 run
used as many GPUs or fewer; writes ``bench/results/precision-check.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_CSV = ROOT.parent / "shared" / "mlenergy_v3_llm_configs.csv"

PROMPT = 256  # assumed prompt length of both tasks
# (layers, KV heads) with head_dim 128, from the models' config.json
KV_GEOMETRY = {8.03: (32, 8), 70.6: (80, 8), 8.19: (36, 8), 14.8: (40, 8), 32.8: (64, 8)}
# FACTS.md, H200 prefill probe: params (B) -> J per prompt token at batch 8 x 1024
PREFILL_PROBE = {1.5: 0.0060, 7.0: 0.020, 14.0: 0.040, 32.0: 0.081}
# Qwen2.5 shapes of the probe: params (B) -> (layers, d_model)
PROBE_SHAPES = {7.6: (28, 3584), 14.7: (48, 5120), 32.8: (64, 5120)}


def fit_prefill() -> tuple[float, float, float]:
    n = np.array(list(PREFILL_PROBE))
    e = np.array(list(PREFILL_PROBE.values()))
    slope, intercept = np.polyfit(np.log(n), np.log(e), 1)
    attn = float(np.mean([4 * layers * d / (2 * p * 1e9) for p, (layers, d) in PROBE_SHAPES.items()]))
    return float(np.exp(intercept)), float(slope), attn


def fit_kv_exponent() -> float:
    sizes = list(KV_GEOMETRY)
    kv_bytes = [2 * layers * heads * 128 * 2 for layers, heads in KV_GEOMETRY.values()]
    slope, _ = np.polyfit(np.log(sizes), np.log(kv_bytes), 1)
    return float(slope)


def load_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return [
            r
            for r in csv.DictReader(f)
            if r["gpu_model"] == "H100"
            and r["weight_precision"] == "bfloat16"
            and r["architecture"] == "Dense Transformer"
            and r["task"] in ("lm-arena-chat", "gpqa")
        ]


def fit_decode(rows: list[dict], pre: float, pre_exp: float, kv_exp: float) -> tuple[np.ndarray, np.ndarray]:
    n = np.array([float(r["total_params_billions"]) for r in rows])
    b = np.array([float(r["avg_batch_size"]) for r in rows])
    out = np.array([float(r["avg_output_len"]) for r in rows])
    g = np.array([float(r["num_gpus"]) for r in rows])
    e = np.array([float(r["energy_per_token_joules"]) for r in rows])
    prefill_share = pre * n**pre_exp * PROMPT / out
    ctx = PROMPT + out / 2
    x = np.c_[1 / b, n / b, (g - 1) / b, n, n**kv_exp * ctx]
    w = 1 / e
    coef, *_ = np.linalg.lstsq(x * w[:, None], (e - prefill_share) * w, rcond=None)
    predicted = x @ coef + prefill_share
    return coef, predicted / e - 1


def precision_check(path: Path) -> dict:
    """FP8 against bf16 on ML.ENERGY v3: measured and modelled J/token ratios, per model and GPU count."""
    from gateway.energy.coefficients import TokenCosts

    def modelled(r: dict, bits: float) -> float:
        costs = TokenCosts(float(r["total_params_billions"]), int(r["num_gpus"]), r["gpu_model"].lower(), bits)
        return costs.decode(float(r["avg_batch_size"]), PROMPT + float(r["avg_output_len"]) / 2)

    with path.open() as f:
        rows = list(csv.DictReader(f))
    runs: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        key = (r["task"], r["gpu_model"], r["model_id"].removesuffix("-FP8"), r["max_num_seqs"])
        runs.setdefault(key, {}).setdefault(r["weight_precision"], []).append(r)
    groups: dict[str, dict[str, list[float]]] = {}
    for (_, _, model, _), by in runs.items():
        for f8 in by.get("fp8", []):
            for bf in by.get("bfloat16", []):
                gpus = "as many GPUs" if f8["num_gpus"] == bf["num_gpus"] else "fewer GPUs"
                g = groups.setdefault(f"{model.split('/')[-1]}, {gpus}", {"measured": [], "modelled": []})
                g["measured"].append(float(f8["energy_per_token_joules"]) / float(bf["energy_per_token_joules"]))
                g["modelled"].append(modelled(f8, 8.0) / modelled(bf, 16.0))
    out = {}
    for name, g in sorted(groups.items()):
        m, p = np.array(g["measured"]), np.array(g["modelled"])
        out[name] = {"pairs": len(m), "measured_median": round(float(np.median(m)), 2),
                     "measured_range": [round(float(m.min()), 2), round(float(m.max()), 2)],
                     "modelled_median": round(float(np.median(p)), 2)}  # fmt: skip
        print(f"{name:48s} {len(m):3d} pairs: FP8/bf16 measured {out[name]['measured_median']:.2f} "
              f"({m.min():.2f}-{m.max():.2f}), modelled {out[name]['modelled_median']:.2f}")  # fmt: skip
    return out


def write_precision_readme(record: dict) -> None:
    """The README's sentence on what FP8 saves, from the results file."""
    from bench.common import readme_block

    groups = record["groups"]
    parts = [f"{name} {g['measured_median']:.2f}x ({g['measured_range'][0]:.2f}-{g['measured_range'][1]:.2f})"
             for name, g in groups.items()]  # fmt: skip
    modelled = [g["modelled_median"] for g in groups.values()]
    close = [name for name, g in groups.items() if abs(g["modelled_median"] / g["measured_median"] - 1) <= 0.15]
    readme_block("precision-check", (
        f"on ML.ENERGY v3's FP8 runs against the same model in bf16 (same task, GPU and batch limit; "
        f"`{record['command']}`, `bench/results/precision-check.json`), FP8 cost per generated token, median "
        f"(range): {'; '.join(parts)}. The weight-bytes model alone predicts {min(modelled):.2f}-{max(modelled):.2f}x "
        f"for all of them: within 15% of the measured median for {len(close)} of the {len(groups)} groups "
        f"({'; '.join(close) or 'none'}), optimistic for the others."
    ))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--check", action="store_true", help="fail if the code's constants differ from the fit")
    ap.add_argument("--precision", action="store_true", help="check the weight-bits term on ML.ENERGY's FP8 rows")
    args = ap.parse_args()
    if args.precision:
        from bench.common import write_results

        groups = precision_check(args.csv)
        record = write_results(ROOT / "bench" / "results" / "precision-check.json",
                               "python bench/derive_energy_coefficients.py --precision", groups=groups)  # fmt: skip
        write_precision_readme(record)
        return 0

    pre, pre_exp, attn = fit_prefill()
    kv_exp = fit_kv_exponent()
    rows = load_rows(args.csv)
    coef, rel = fit_decode(rows, pre, pre_exp, kv_exp)
    derived = {
        "STEP0": coef[0], "STEP_N": coef[1], "STEP_TP": coef[2], "TOK": coef[3], "KV": coef[4],
        "KV_EXP": kv_exp, "PRE": pre, "PRE_EXP": pre_exp, "ATTN": attn,
    }  # fmt: skip
    print(f"# {len(rows)} H100 dense bf16 rows of {args.csv.name}; relative error rms "
          f"{np.sqrt(np.mean(rel**2)):.1%}, worst {np.max(np.abs(rel)):.1%}")  # fmt: skip
    for name, value in derived.items():
        print(f"{name} = {value:.4g}")
    print()
    print(f"{'task':5} {'model':26} g {'batch':>5} {'J/tok':>7} {'model':>7}")
    for r, err in zip(rows, rel):
        e = float(r["energy_per_token_joules"])
        print(f"{r['task'][:5]:5} {r['model_id'].split('/')[-1][:26]:26} {r['num_gpus']} "
              f"{float(r['avg_batch_size']):5.0f} {e:7.3f} {e * (1 + err):7.3f}")  # fmt: skip

    if args.check:
        from gateway.energy import coefficients as code

        moved = [n for n, v in derived.items() if abs(getattr(code, n) / v - 1) > 0.01]
        if moved:
            print(f"constants out of date in gateway/energy/coefficients.py: {', '.join(moved)}")
            return 1
        print("gateway/energy/coefficients.py matches the data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
