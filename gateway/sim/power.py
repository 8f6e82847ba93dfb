"""GPU cost and power model, energy timeline, and a DCGM-exporter-style energy counter.

The step cost model
-------------------
One continuous-batching step on one GPU of a tensor-parallel group costs

    t_step = T0 + T1·m·P + T_TP·[tp > 1]                    fixed: launch overhead, weight streaming, all-reduce
           + Σ_decode (C_TOK·P + C_KV·m·kv·ctx_i)              per running sequence: its compute + its KV-cache reads
           + Σ_prefill n_j·t_pf·(1 + ATTENTION·(s_j + n_j/2))  prompt chunks: compute-bound, attention grows with ctx

with P the parameters per GPU (billions), kv the KV-cache bytes per token per GPU, ctx_i the
sequence's context length, n_j/s_j a prompt chunk's length and start, and m the memory-bandwidth
factor of the GPU (1 on an H100, 3.35/4.8 on an H200: same tensor cores, faster HBM3e).
Energy per GPU in the step is

    E = W_FIXED·t_fixed + W_DECODE·t_decode + W_PREFILL·t_prefill     (scaled down if E/t > power limit)

Calibration (``bench/calibrate_sim.py`` re-derives every constant): T0, T1, T_TP, C_TOK, C_KV,
W_FIXED and W_DECODE are a least-squares fit to the 77 H100 rows of ML.ENERGY leaderboard v3
(vLLM 0.11.1) for Llama-3.1-8B/70B, Llama-3.3-70B, Qwen3-8B/14B/32B on tasks lm-arena-chat and
gpqa (step time = avg_batch_size / output_throughput, power = avg_power_watts / num_gpus); the
fit is within ±10 % on time and power for most rows. The fitted terms are physical: weights stream
at 3.2 TB/s, KV reads at 2.5 TB/s, decode compute at ~420 TFLOP/s. Prefill throughput (530 TFLOP/s)
and prefill power (at the 700 W cap) come from the project's own H200 probe (FACTS.md). Idle power:
85 W for an H200 with a CUDA context (FACTS.md, measured); 75 W for an H100 (estimate: no
authoritative figure, a CUDA context adds 26–50 W over bare idle).

The ground truth
----------------
Each step's energy (summed over the GPUs of the group) is split between the sequences in it by the
same cost model: the fixed part (W_FIXED·t_fixed, weights streamed once for everybody) in equal
shares per sequence, each decode sequence's own work (W_DECODE·(C_TOK·P + C_KV·m·kv·ctx_i), so a
long context costs more) to that sequence, and each prompt chunk's compute to its sequence. Time
with no sequence on the GPU is idle energy. This is deliberately not "a fixed weight per token":
the gateway's attribution is tested against something physical.
"""

from __future__ import annotations

import math
import socket
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

# --- Calibration constants (bench/calibrate_sim.py on ML.ENERGY v3, 77 H100 rows; see docstring) ---
T0 = 2.551e-3  # s per step: launch and scheduling overhead
T1 = 6.205e-4  # s per step per billion parameters on the GPU: weight streaming (3.2 TB/s)
T_TP = 2.086e-3  # s per step when tensor parallel: all-reduce
C_TOK = 4.809e-6  # s per decoding sequence per billion parameters on the GPU (~420 TFLOP/s)
C_KV = 3.963e-13  # s per KV-cache byte read by attention (2.5 TB/s)
KV_A, KV_B = 5.762e4, 0.4143  # KV bytes per token ≈ KV_A · params_b ** KV_B (Llama-3.1, Qwen3 geometries)
F_PREFILL = 530e12  # FLOP/s of prefill (FACTS.md: 7B 36.2k tok/s, 14B 17.9k tok/s on one H200)
ATTENTION = 3.3e-5  # extra prefill cost per token of context, relative to the 2·P FLOP per token
W_FIXED = 431.6  # W while a step streams the weights (fit)
W_DECODE = 687.7  # W for per-sequence decode work (fit)
W_PREFILL = 690.0  # W for prefill compute (FACTS.md: 713–723 W measured, i.e. at the 700 W cap)

# The NVML energy counter advances in steps of about 100 ms (FACTS.md, H200 probe).
COUNTER_PERIOD = 0.1


@dataclass(frozen=True)
class GpuSpec:
    key: str
    model_name: str  # as NVML/DCGM report it
    memory_bytes: int
    mem_factor: float  # memory-bound time relative to an H100 (HBM bandwidth ratio)
    idle_watts: float
    power_limit: float


GPUS = {
    "h200": GpuSpec("h200", "NVIDIA H200", 143_771 * 2**20, 3.35 / 4.8, 85.0, 700.0),
    "h100": GpuSpec("h100", "NVIDIA H100 80GB HBM3", 81_559 * 2**20, 1.0, 75.0, 700.0),
}


class StepModel(Protocol):
    """What the engine needs of a GPU model (``CostModel`` here, ``roofline.RooflineModel``)."""

    gpus: int
    kv_bytes_per_gpu: float
    idle_watts: float

    def prefill_time(self, chunk: int, start: int) -> float: ...

    def step(
        self, decode_ctxs: list[int], prefill: list[tuple[int, int]], now: float
    ) -> tuple[float, float, list[float]]: ...


# vLLM's --quantization methods the simulator takes: bits per stored weight (4-bit formats carry
# a scale per group of 128 weights, ~0.25 bit each; FP4's per 16, 0.5)
QUANTIZATION_BITS = {
    "fp8": 8.0, "awq": 4.25, "awq_marlin": 4.25, "gptq": 4.25, "gptq_marlin": 4.25, "bitsandbytes": 4.25,
    "mxfp4": 4.25, "modelopt_fp4": 4.5,
}  # fmt: skip


def kv_bytes_per_token(params_b: float) -> float:
    return KV_A * params_b**KV_B


class CostModel:
    """Prices a step for a model of ``params_b`` billion parameters on ``gpus`` GPUs (tensor parallel)."""

    def __init__(self, params_b: float, gpus: int, gpu: GpuSpec, weight_bits: float = 16.0) -> None:
        self.gpus = gpus
        self.gpu = gpu
        p = params_b / gpus
        kv = kv_bytes_per_token(params_b) / gpus
        self.kv_bytes_per_gpu = kv
        # streaming the weights once a step, in their bytes (T1 was fitted on bf16)
        self.t_fixed = T0 + T1 * gpu.mem_factor * p * (weight_bits / 16.0) + (T_TP if gpus > 1 else 0.0)
        self.t_tok = C_TOK * p
        self.t_ctx = C_KV * gpu.mem_factor * kv
        self.t_prefill_tok = 2.0 * p * 1e9 / F_PREFILL
        self.idle_watts = gpu.idle_watts * gpus  # for the whole group

    def prefill_time(self, chunk: int, start: int) -> float:
        return chunk * self.t_prefill_tok * (1.0 + ATTENTION * (start + chunk / 2.0))

    def price(self, n_decode: int, ctx_sum: int, prefill_times: list[float]) -> tuple[float, ...]:
        """Price a step with ``n_decode`` decoding sequences and the given prompt chunks.

        Returns ``(t, energy, decode_a, decode_b, fixed_share, prefill_watts)`` with energies for
        the whole GPU group: a decode sequence of context ``ctx`` is charged ``decode_a +
        decode_b·ctx``, a prompt chunk of duration ``d`` is charged ``fixed_share +
        prefill_watts·d``; the charges add up to ``energy``.
        """
        t_pf = sum(prefill_times)
        t_dec = n_decode * self.t_tok + self.t_ctx * ctx_sum
        t = self.t_fixed + t_dec + t_pf
        e_fixed = W_FIXED * self.t_fixed
        e = e_fixed + W_DECODE * t_dec + W_PREFILL * t_pf
        cap = self.gpu.power_limit * t
        scale = self.gpus * (cap / e if e > cap else 1.0)  # power capping throttles the whole step
        fixed_share = e_fixed * scale / (n_decode + len(prefill_times))
        decode_a = fixed_share + W_DECODE * self.t_tok * scale
        return t, e * scale, decode_a, W_DECODE * self.t_ctx * scale, fixed_share, W_PREFILL * scale


    def step(
        self, decode_ctxs: list[int], prefill: list[tuple[int, int]], now: float
    ) -> tuple[float, float, list[float]]:
        """The engine's interface (as ``roofline.RooflineModel.step``): seconds, joules, and each
        sequence's share (decode first, then prompt chunks), by this model's additive split."""
        prefill_times = [self.prefill_time(chunk, start) for chunk, start in prefill]
        t, energy, dec_a, dec_b, fixed_share, prefill_watts = self.price(
            len(decode_ctxs), sum(decode_ctxs), prefill_times
        )
        shares = [dec_a + dec_b * ctx for ctx in decode_ctxs] + [
            fixed_share + prefill_watts * d for d in prefill_times
        ]
        return t, energy, shares


class EnergyMeter:
    """The group's cumulative energy as a piecewise-linear function of simulated time.

    Steps are booked when they start (the GPU is committed to them), so ``booked_j`` can run a
    step ahead of the present; readers ask for the energy at a moment, which interpolates.
    """

    HISTORY = 5.0  # seconds of simulated time kept for interpolation (the 1-s power window needs 1.1)

    def __init__(self) -> None:
        self.segments: deque[tuple[float, float, float, float]] = deque()  # (v0, v1, energy at v0, watts)
        self.v_end = 0.0
        self.booked_j = 0.0

    def book(self, v1: float, watts: float) -> float:
        """Extend the timeline to ``v1`` at constant ``watts``; returns the energy added."""
        v0 = self.v_end
        if v1 <= v0:
            return 0.0
        joules = watts * (v1 - v0)
        self.segments.append((v0, v1, self.booked_j, watts))
        self.booked_j += joules
        self.v_end = v1
        segments = self.segments
        while len(segments) > 1 and segments[0][1] < v1 - self.HISTORY:
            segments.popleft()
        return joules

    def energy_at(self, v: float) -> float:
        if v >= self.v_end:
            return self.booked_j
        for v0, v1, e0, watts in reversed(self.segments):
            if v >= v0:
                return e0 + watts * (min(v, v1) - v0)
        return self.segments[0][2] if self.segments else 0.0


def tick(v: float) -> float:
    """The last moment the energy counter was updated at or before simulated time ``v``."""
    return math.floor(v / COUNTER_PERIOD + 1e-9) * COUNTER_PERIOD


COUNTER_JITTER = 0.012  # s: with jitter, each update lands up to this late (driver scheduling)


def jittered_tick(v: float, seed: int) -> float:
    """Like ``tick``, but update number k happens at k * COUNTER_PERIOD + a delay in [0, COUNTER_JITTER)
    that differs per update (deterministic in ``seed`` and k)."""
    k = math.floor(v / COUNTER_PERIOD + 1e-9)
    for j in (k, k - 1):
        at = j * COUNTER_PERIOD + COUNTER_JITTER * (zlib.crc32(f"{seed}:{j}".encode()) / 2**32)
        if at <= v:
            return at
    return max(0.0, (k - 1) * COUNTER_PERIOD)


def _gpu_uuid(seed: int, index: int) -> str:
    h = f"{zlib.crc32(f'sim-gpu-{seed}-{index}'.encode()):08x}{zlib.crc32(f'{index}-{seed}-uuid'.encode()):08x}"
    h += f"{zlib.crc32(f'{seed}:{index}'.encode()):08x}{zlib.crc32(f'{index}:{seed}'.encode()):08x}"
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class DcgmCounters:
    """Per-GPU ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ) and ``DCGM_FI_DEV_POWER_USAGE`` (W).

    Like NVML's counter: energy since the driver loaded (a large arbitrary start value), advancing
    every ``COUNTER_PERIOD`` of simulated time; a driver restart (``reset``) sets it back to ~0.
    GPUs of one tensor-parallel group do the same work; each draws a slightly different share
    (±1.5 %, as real boards differ) and the shares add up to the group's energy.
    """

    def __init__(self, gpus: int, gpu: GpuSpec, seed: int, labels: dict[str, str] | None = None,
                 jitter: bool = False) -> None:
        self.seed, self.jitter = seed, jitter
        weights = [1.0 + 0.015 * ((i % 3) - 1) for i in range(gpus)]
        total = sum(weights)
        self.shares = [w / total for w in weights]
        # mJ "since driver load": a few days of idle at boot
        self.offsets_mj = [
            float(1_000_000_000 + zlib.crc32(f"{seed}-{i}".encode()) % 4_000_000_000) for i in range(gpus)
        ]
        extra = labels or {}
        host = socket.gethostname()
        self.label_strings = []
        for i in range(gpus):
            parts = {
                "gpu": str(i),
                "UUID": _gpu_uuid(seed, i),
                "pci_bus_id": f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                "device": f"nvidia{i}",
                "modelName": gpu.model_name,
                "Hostname": host,
                "DCGM_FI_DRIVER_VERSION": "580.159.04",
                **extra,
            }
            self.label_strings.append(",".join(f'{k}="{v}"' for k, v in parts.items()))

    def reset(self, meter: EnergyMeter, now: float) -> None:
        """Driver reload: every counter restarts from zero at the current tick."""
        e = meter.energy_at(tick(now)) * 1000.0
        self.offsets_mj = [-share * e for share in self.shares]

    def render(self, meter: EnergyMeter, now: float) -> bytes:
        last = jittered_tick(now, self.seed) if self.jitter else tick(now)
        energy_mj = meter.energy_at(last) * 1000.0
        window = min(1.0, last)  # NVML's power reading on Hopper is a 1-s average
        watts = (meter.energy_at(last) - meter.energy_at(last - window)) / window if window > 0 else 0.0
        lines = [
            "# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).",
            "# TYPE DCGM_FI_DEV_POWER_USAGE gauge",
        ]
        lines += [
            f"DCGM_FI_DEV_POWER_USAGE{{{lab}}} {watts * s:.6f}" for lab, s in zip(self.label_strings, self.shares)
        ]
        lines += [
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        ]
        lines += [
            f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{lab}}} {int(off + energy_mj * s)}"
            for lab, s, off in zip(self.label_strings, self.shares, self.offsets_mj)
        ]
        return ("\n".join(lines) + "\n").encode()
