"""A deployment's weight precision: from the config, else from the model's name.

vLLM's API does not say how a model's weights are stored: ``/v1/models`` gives the served name,
its ``root`` (the checkpoint's path or Hugging Face id) and ``max_model_len``, and its metrics
give the KV cache's dtype, not the weights'. Quantized checkpoints say so in their names by
convention ("Qwen3-32B-FP8", "Llama-3.1-8B-Instruct-AWQ", "...-GPTQ-Int4", "...-W8A8",
"...-W4A16", "...-NVFP4"), and gpt-oss ships its experts in MXFP4; ``models: {NAME: {precision:
...}}`` in the config says it for any other. Unknown means 16-bit (bf16), vLLM's default.

The precision is used for its weight bits: streaming the weights once per decode step is the
memory-bound part of a step's cost (``energy/coefficients.py``), and it scales with their bytes.
"""

from __future__ import annotations

import re
from typing import Literal

Precision = Literal["bf16", "fp16", "fp8", "int8", "awq", "gptq", "int4", "mxfp4", "nvfp4"]

WEIGHT_BITS: dict[str, float] = {
    "bf16": 16.0, "fp16": 16.0, "fp8": 8.0, "int8": 8.0,
    # 4-bit formats carry a scale per group of weights: ~4.25 bits per weight for groups of 128
    "awq": 4.25, "gptq": 4.25, "int4": 4.25, "mxfp4": 4.25, "nvfp4": 4.5,
}  # fmt: skip

# Checked in order; the first that matches the lower-cased name wins.
_NAMED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), precision)
    for pattern, precision in (
        (r"nvfp4|(^|[-_./])fp4($|[-_./])", "nvfp4"),
        (r"mxfp4|gpt-oss", "mxfp4"),
        (r"(^|[-_./])awq($|[-_./])", "awq"),
        (r"(^|[-_./])gptq($|[-_./])", "gptq"),
        (r"w4a16|(^|[-_./])int4($|[-_./])|4bit|bnb-4", "int4"),
        (r"fp8", "fp8"),
        (r"w8a8|w8a16|(^|[-_./])int8($|[-_./])", "int8"),
        (r"(^|[-_./])fp16($|[-_./])", "fp16"),
    )
)


def precision_from_name(name: str | None) -> str | None:
    """The precision a checkpoint's name states, or None when it states none."""
    if not name:
        return None
    low = name.lower()
    for pattern, precision in _NAMED:
        if pattern.search(low):
            return precision
    return None


def precision_of(name: str, configured: str | None = None, root: str | None = None) -> str:
    """The config's word, else the served name's, else its root's, else bf16."""
    return configured or precision_from_name(name) or precision_from_name(root) or "bf16"
