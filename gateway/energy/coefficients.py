"""What a token costs in joules: the model behind attribution weights and estimates.

One physical model, fitted offline (``bench/derive_energy_coefficients.py`` re-derives every
constant; nothing here reads ../shared at run time), serves three purposes:

* the **work weights** of attribution: an interval's measured energy is split in proportion
  to the joules this model predicts for each token processed in it, so a generated token
  weighs more than a prompt token, a token in a small batch more than one in a big batch,
  and a token deep in a long context more than one near its start;
* the **estimate meter** (no GPU meter configured, or the meter failed): the predicted
  joules themselves, labelled ``estimated``;
* **counterfactuals**: what the same tokens would have cost on another model.

Decode (one generated token, whole tensor-parallel group, joules)::

    e_dec(N, B, ctx) = STEP(N, g) / B  +  TOK·N  +  KV·N^0.414·m·ctx
    STEP(N, g)      = STEP0 + STEP_N·N·m + STEP_TP·(g - 1)

A continuous-batching step streams every weight once for the whole batch (``STEP``, shared by
the ``B`` running sequences), does ~2·N FLOP of compute per sequence (``TOK``) and reads each
sequence's KV cache, which grows with its context (``KV``; KV bytes per token of Llama-3.1 and
Qwen3 geometries grow as N^0.414). ``m`` is the memory-bandwidth factor of the GPU (1 on an
H100; 3.35/4.8 on an H200: same tensor cores, faster HBM) applied to the memory-bound terms.
Fitted by least squares on relative error to the 93 dense bf16 H100 rows of ML.ENERGY
leaderboard v3 (lm-arena-chat and gpqa: Llama-3.1-8B/70B, Llama-3.3-70B, Qwen3-8B/14B/32B,
Gemma-3-12B/27B; energy_per_token_joules against avg_batch_size, avg_output_len, num_gpus),
after removing each row's prefill share (prompts assumed 256 tokens, which the table does not
give); context = 256 + avg_output_len / 2. RMS error 8.7 %, worst row 27 % (Gemma-3 at large batch);
e.g. Llama-3.1-8B on one H100 at batch 64: 0.119 J measured, 0.114 J modelled.

Prefill (one prompt token, compute-bound)::

    e_pre(N, ctx) = PRE·N^PRE_EXP · (1 + ATTN·ctx) / (1 + ATTN·512)

from the project's H200 probe (FACTS.md: 1.5B 0.0060, 7B 0.020, 14B 0.040, 32B 0.081 J per
prompt token at batch 8 x 1024, mean context 512; the 0.5B point is overhead-bound and left
out). ATTN is the attention FLOP per context token relative to the 2·N of the matmuls,
4·layers·d_model / 2·N averaged over Qwen2.5-7B/14B/32B shapes.

Quantized weights (``gateway/precision.py``) scale the weight-streaming term by their bits over
16: an FP8 deployment streams half the bytes per step. Checked on ML.ENERGY v3's FP8 rows
(``bench/derive_energy_coefficients.py --precision``, ``bench/results/precision-check.json``):
it predicts FP8 against bf16 for Llama-3.1-405B (0.70 modelled, 0.64 measured median; FP8 on
half the GPUs) and Qwen3-235B-Instruct on fewer GPUs (0.70, 0.73), but is optimistic for mixtures
of experts on as many GPUs (Qwen3-235B 0.70-0.74 against 0.94-1.09; Qwen3-Coder-480B 0.79
against 3.33). So the weight bits are only the prior: each backend's calibration
(``estimators.Calibration``) moves its prices to what its meter measures, and the router compares
deployments by the calibrated price (``EnergyService.expected_j_per_token``).

So a prompt token costs 2-30 % of a generated one: ~7 % for an 8B model at batch 8, ~25 % at
batch 128 (the step cost is shared by more sequences), which is why the ratio is computed per
interval from the batch the backend reports rather than fixed.
"""

from __future__ import annotations

# --- decode, fitted on ML.ENERGY v3 (bench/derive_energy_coefficients.py) --------------------
STEP0 = 0.4832  # J per step: launch and scheduling overhead
STEP_N = 0.3572  # J per step per billion parameters: streaming the weights (memory-bound)
STEP_TP = 0.5404  # J per step per extra tensor-parallel GPU: all-reduce and idle shares
TOK = 0.003577  # J per sequence per step per billion parameters: decode compute
KV = 1.6658e-5  # J per token of context per sequence per step, times N^KV_EXP (memory-bound)
KV_EXP = 0.4143  # KV-cache bytes per token ~ N^0.414 (Llama-3.1 / Qwen3 geometries)

# --- prefill, from the H200 probe in FACTS.md ---------------------------------------------------
PRE = 0.004108  # J per prompt token for a 1B model
PRE_EXP = 0.8538
ATTN = 2.661e-5  # extra prefill cost per token of context, relative

# --- power -----------------------------------------------------------------------------------------
IDLE_W = {"h200": 85.0, "h100": 75.0}  # per GPU with a CUDA context: H200 measured (FACTS.md); H100 est.
BUSY_W = 600.0  # per GPU while serving: ML.ENERGY H100 rows average 430-690 W per GPU
PREFILL_W = 700.0  # per GPU during prefill: the H200 probe drew 713-723 W, i.e. its 700 W cap (FACTS.md)
MEMORY_FACTOR = {"h100": 1.0, "h200": 3.35 / 4.8}  # HBM bandwidth relative to an H100

DEFAULT_PARAMS_B = 8.0  # when nothing tells us the model's size
DEFAULT_CONTEXT = 512  # context of a generated token we know nothing about (others' traffic)
DEFAULT_BATCH = 8.0  # smallest batch ML.ENERGY measured; used when the backend's batch is unknown


class TokenCosts:
    """Joules per token for one model on one backend (``params_b`` billions on ``gpus`` GPUs)."""

    __slots__ = ("params_b", "gpus", "gpu", "step_j", "tok_j", "ctx_j", "pre_j", "idle_w")

    def __init__(self, params_b: float | None, gpus: int = 1, gpu: str = "h200", weight_bits: float = 16.0) -> None:
        n = params_b if params_b and params_b > 0 else DEFAULT_PARAMS_B
        m = MEMORY_FACTOR.get(gpu.lower(), 1.0)
        self.params_b = n
        self.gpus = max(1, gpus)
        self.gpu = gpu
        # the weights streamed once per step, in their stored bytes (fitted on bf16: 16 bits)
        self.step_j = STEP0 + STEP_N * n * m * (weight_bits / 16.0) + STEP_TP * (self.gpus - 1)
        self.tok_j = TOK * n
        self.ctx_j = KV * n**KV_EXP * m
        self.pre_j = PRE * n**PRE_EXP / (1.0 + ATTN * 512)
        self.idle_w = IDLE_W.get(gpu.lower(), 80.0) * self.gpus

    def decode(self, batch: float, context: float = DEFAULT_CONTEXT) -> float:
        """Joules of one generated token at ``context`` tokens, in a batch of ``batch`` sequences."""
        return self.step_j / max(1.0, batch) + self.tok_j + self.ctx_j * context

    def decode_run(self, batch: float, tokens: float, context_sum: float) -> float:
        """Joules of ``tokens`` generated tokens whose contexts add up to ``context_sum``."""
        return (self.step_j / max(1.0, batch) + self.tok_j) * tokens + self.ctx_j * context_sum

    def decode_parts(self, batch: float, tokens: float, context_sum: float) -> tuple[float, float]:
        """``decode_run`` in its two parts: the steps' shared cost, and the tokens' own (compute, KV)."""
        return self.step_j / max(1.0, batch) * tokens, self.tok_j * tokens + self.ctx_j * context_sum

    def prefill(self, tokens: float, start: float = 0.0) -> float:
        """Joules of processing ``tokens`` prompt tokens that begin at position ``start``."""
        mean_ctx = start + tokens / 2.0
        return self.pre_j * tokens * (1.0 + ATTN * mean_ctx)

    def request(self, prompt_tokens: int, completion_tokens: int, batch: float = DEFAULT_BATCH) -> float:
        """Joules of a whole request: its prompt, then each generated token at its own context."""
        g = max(0, completion_tokens)
        p = max(0, prompt_tokens)
        context_sum = g * p + g * (g - 1) / 2.0
        return self.prefill(p) + self.decode_run(batch, g, context_sum)

    def prefill_seconds(self, tokens: float) -> float:
        """How long a prefill of ``tokens`` takes: compute-bound, so its joules at the power cap."""
        return self.prefill(tokens) / (PREFILL_W * self.gpus)


def context_sum(prompt: int, first: int, last: int) -> float:
    """Sum of the contexts of generated tokens number ``first`` .. ``last - 1`` after ``prompt``."""
    n = last - first
    if n <= 0:
        return 0.0
    return n * (prompt + (first + last - 1) / 2.0)

