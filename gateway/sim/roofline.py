"""A second GPU model for the simulator, of a different form from the gateway's cost model.

The gateway splits measured energy with an *additive* per-token cost model (a shared step cost per
sequence, per-token compute, KV reads, prefill; ``gateway/energy/coefficients.py``), and the
simulator's first model (``power.CostModel``) charges requests with the same form. A test of
the one against the other checks bookkeeping more than physics. This model is built differently
on purpose (``--power-model roofline``):

* **Step time is a roofline**: the larger of the memory time (weights once, plus every running
  sequence's KV cache, at an effective bandwidth) and the compute time (2 FLOP per parameter per
  token, padded decode batches, attention growing with context, at an effective FLOP rate), the
  two roofs joined smoothly (a p-norm, as kernels overlap them imperfectly), plus a launch
  overhead and, with tensor parallelism, an all-reduce. Not a sum of per-token costs.
* **Decode batches are padded** to the sizes vLLM captures CUDA graphs for (1, 2, 4, 8, then
  multiples of 8 up to 512): 9 sequences cost the compute of 16.
* **Power is concave in utilisation, with static power while busy**: per GPU
  ``P_STATIC + P_DYN * (u_compute + W_MEM * u_memory) ** GAMMA`` (``u`` the share of the step the
  compute or the memory roof is busy), capped at the board's limit, times per-step noise
  (log-normal) and a slow thermal drift.
* **Architecture matters**: KV bytes per token from layers, KV heads and head size (sliding-window
  layers read at most their window), so two 8B models with different geometry draw different power.
* **The meter is less tidy**: the DCGM energy counter still steps every ~100 ms, but each update
  lands up to 12 ms late (``power.jittered_tick``).

Ground truth ("causal accounting", by usage): power accrues with time. The energy of a step's
overhead time (launch, all-reduce) goes in equal shares to the sequences in it; the energy of its
busy time, static and dynamic power alike, is split by what each sequence does to the two roofs,
weighted by how busy each roof is: on the compute roof its own tokens (a prompt chunk's, with
attention over its context) plus an equal share of the padded slots; on the memory roof its own
KV-cache reads plus an equal share of the weights. A long prompt chunk that makes a step
compute-bound pays for the time it adds.
Because the roofs overlap and power is concave, none of this is the gateway's per-token price.
``bench/attribution_eval.py`` also measures a second truth, the *marginal* cost of a request.

The constants are fitted by ``bench/calibrate_roofline.py`` on part of ML.ENERGY v3's H100 rows
and checked on models it did not see (``bench/results/power-model-check.json``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from .power import GpuSpec, kv_bytes_per_token

# --- constants: bench/calibrate_roofline.py (fit rows and held-out check in its results file) ---
BW_EFF = 3.35e+12  # bytes/s of HBM actually achieved per H100 (peak 3.35e12)
FLOPS_EFF = 2.924e+14  # FLOP/s actually achieved per H100 on decode GEMMs (peak ~9.9e14 dense bf16)
T_OVH = 0.004996  # s per step: launch and scheduling overhead
T_TP = 0.003464  # s per step with tensor parallelism: all-reduce
P_STATIC = 216.8  # W per GPU while a step runs, before any work
P_DYN = 393.6  # W per GPU at full utilisation above static
GAMMA = 0.5399  # concavity of power in utilisation
W_MEM = 0.657  # memory-roof utilisation draws this share of what compute utilisation draws
SOFT = 4  # the two roofs overlap imperfectly: busy time = (t_mem**SOFT + t_cmp**SOFT) ** (1/SOFT)
NOISE_SIGMA = 0.03  # per-step log-normal noise on power
THERMAL = (0.02, 90.0)  # slow drift: amplitude, period in simulated seconds
ATTENTION = 3.3e-5  # extra compute per token of context, relative to the 2 FLOP per parameter
PREFILL_FLOPS = 5.30e14  # FLOP/s of prefill on an H100-class GPU (FACTS.md, H200 probe)

# CUDA-graph batch sizes vLLM captures for decode (1, 2, 4, then multiples of 8)
_GRAPH_SIZES = [1, 2, 4] + list(range(8, 513, 8))


def padded(n: int) -> int:
    """The CUDA-graph batch a decode step of ``n`` sequences runs as (eager above 512)."""
    if n <= 0:
        return 0
    for size in _GRAPH_SIZES:
        if size >= n:
            return size
    return n


@dataclass(frozen=True)
class Arch:
    """What the roofline needs of a model: KV bytes per token, split by attention span."""

    kv_global: float  # bytes per token, layers that attend to the whole context
    kv_local: float = 0.0  # bytes per token, sliding-window layers
    window: int = 0

    def kv_read(self, ctx: float) -> float:
        return self.kv_global * ctx + self.kv_local * min(ctx, self.window)


def _kv(layers: int, kv_heads: int, head_dim: int) -> float:
    return 2.0 * layers * kv_heads * head_dim * 2  # K and V, bf16


# Known geometries (layers, KV heads, head size; sliding window: global layers, window). Others: a
# power law of the parameter count fitted on the Llama-3.1 / Qwen3 family (power.kv_bytes_per_token).
_KNOWN: tuple[tuple[str, Arch], ...] = (
    ("llama-3.1-8b", Arch(_kv(32, 8, 128))),
    ("llama-3.1-70b", Arch(_kv(80, 8, 128))),
    ("llama-3.3-70b", Arch(_kv(80, 8, 128))),
    ("qwen3-8b", Arch(_kv(36, 8, 128))),
    ("qwen3-14b", Arch(_kv(40, 8, 128))),
    ("qwen3-32b", Arch(_kv(64, 8, 128))),
    ("qwen3-1.7b", Arch(_kv(28, 8, 128))),
    ("gemma-3-12b", Arch(_kv(8, 8, 256), _kv(40, 8, 256), 1024)),  # 1 global layer in 6
    ("gemma-3-27b", Arch(_kv(10, 16, 128), _kv(52, 16, 128), 1024)),
)


def arch_for(model: str, params_b: float) -> Arch:
    low = model.lower()
    for needle, arch in _KNOWN:
        if re.search(re.escape(needle) + r"(?![\d.])", low):
            return arch
    return Arch(kv_bytes_per_token(params_b))


class RooflineModel:
    """Prices a step for ``params_b`` billions on ``gpus`` GPUs of ``gpu`` (see the module docstring)."""

    def __init__(self, params_b: float, gpus: int, gpu: GpuSpec, model: str = "", seed: int = 0,
                 noise: bool = True, weight_bits: float = 16.0) -> None:
        self.noise = noise
        self.gpus = gpus
        self.gpu = gpu
        self.arch = arch_for(model, params_b)
        p = params_b / gpus
        self.weight_bytes = weight_bits / 8.0 * p * 1e9  # bf16: 2 bytes a weight
        self.flop_per_token = 2.0 * p * 1e9
        self.kv_bytes_per_gpu = (self.arch.kv_global + self.arch.kv_local) / gpus  # what a cached token occupies
        self.bw = BW_EFF / gpu.mem_factor  # an H200 streams faster: mem_factor = H100 / this GPU
        self.t_fixed = T_OVH + (T_TP if gpus > 1 else 0.0)
        self.idle_watts = gpu.idle_watts * gpus
        self._rng = random.Random(f"roofline:{seed}")
        self.t_prefill_tok = self.flop_per_token / PREFILL_FLOPS

    # the engine needs these two, as from the additive model
    def prefill_time(self, chunk: int, start: int) -> float:
        return chunk * self.t_prefill_tok * (1.0 + ATTENTION * (start + chunk / 2.0))

    def _core(self, n_decode: int, kv_bytes: float, compute_tokens: float) -> tuple[float, float]:
        """(step seconds, joules for the group) without noise."""
        return self._parts(kv_bytes, compute_tokens)[:2]

    def _parts(self, kv_bytes: float, compute_tokens: float) -> tuple[float, float, float, float, float]:
        """(step seconds, joules for the group, static joules, compute-roof share, memory-roof share)."""
        t_mem = (self.weight_bytes + kv_bytes / self.gpus) / self.bw
        t_cmp = self.flop_per_token * compute_tokens / FLOPS_EFF
        t = self.t_fixed + (t_mem**SOFT + t_cmp**SOFT) ** (1.0 / SOFT)
        u_c, u_m = t_cmp / t, W_MEM * t_mem / t
        watts = min(self.gpu.power_limit, P_STATIC + P_DYN * min(1.0, u_c + u_m) ** GAMMA)
        energy = watts * t * self.gpus
        static = min(energy, P_STATIC * t * self.gpus)
        return t, energy, static, u_c, u_m

    def step(
        self, decode_ctxs: list[int], prefill: list[tuple[int, int]], now: float
    ) -> tuple[float, float, list[float]]:
        """Price a step: ``decode_ctxs`` the contexts of the decoding sequences, ``prefill`` the
        (chunk, start) of each prompt chunk. Returns (seconds, joules for the group, each
        sequence's share of the joules: decode first, then prefill, in the order given)."""
        arch = self.arch
        n = len(decode_ctxs)
        k = n + len(prefill)
        reads = [arch.kv_read(c) for c in decode_ctxs]
        pf_cmp = [chunk * (1.0 + ATTENTION * (start + chunk / 2.0)) for chunk, start in prefill]
        pf_kv = [arch.kv_read(start) + chunk * (arch.kv_global + arch.kv_local) for chunk, start in prefill]
        kv_total = sum(reads) + sum(pf_kv)
        pad = n if prefill else padded(n)  # a mixed step runs eagerly: no graph padding
        own_cmp = [1.0 + ATTENTION * c for c in decode_ctxs] + pf_cmp
        cmp_total = sum(own_cmp) + (pad - n)
        t, energy, _, u_c, u_m = self._parts(kv_total, cmp_total)
        noise = 1.0
        if self.noise:
            noise = math.exp(self._rng.gauss(0.0, NOISE_SIGMA)) * (
                1.0 + THERMAL[0] * math.sin(2 * math.pi * now / THERMAL[1])
            )
        energy *= noise
        # usage accounting: power accrues with time. The overhead's time (launch, all-reduce) is
        # everybody's, equally; the roofs' time, static and dynamic power alike, goes by each
        # sequence's share of what keeps each roof busy (the weights and padding are everybody's).
        bytes_total = self.weight_bytes * self.gpus + kv_total
        own_bytes = reads + pf_kv
        overhead = energy * self.t_fixed / t
        busy_e = energy - overhead
        busy = u_c + u_m or 1.0
        shares = []
        for i in range(k):
            cmp_i = (own_cmp[i] + (pad - n) / k) / cmp_total if cmp_total else 1.0 / k
            mem_i = (own_bytes[i] + self.weight_bytes * self.gpus / k) / bytes_total
            shares.append(overhead / k + busy_e * (u_c * cmp_i + u_m * mem_i) / busy)
        return t, energy, shares
