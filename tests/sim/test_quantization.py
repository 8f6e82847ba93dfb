"""--quantization: a quantized model's weights stream and occupy their own bytes in both GPU models."""

from __future__ import annotations

import argparse

import pytest

from gateway.sim.cli import add_arguments, config_from_args
from gateway.sim.power import GPUS, CostModel
from gateway.sim.roofline import RooflineModel
from gateway.sim.server import SimConfig, kv_cache_capacity


@pytest.mark.parametrize("model", ["additive", "roofline"])
def test_fp8_weights_make_a_decode_step_cheaper_and_prefill_no_dearer(model):
    def make(bits):
        if model == "roofline":
            return RooflineModel(32.0, 1, GPUS["h200"], "Qwen/Qwen3-32B", noise=False, weight_bits=bits)
        return CostModel(32.0, 1, GPUS["h200"], weight_bits=bits)

    bf16, fp8 = make(16.0), make(8.0)
    t16, j16, _ = bf16.step([512] * 8, [], 0.0)
    t8, j8, _ = fp8.step([512] * 8, [], 0.0)
    assert t8 < t16 and j8 < j16  # a memory-bound decode step streams half the weight bytes
    assert j8 / j16 > 0.4  # ... and the rest of the step (KV reads, compute, overhead) stays
    assert fp8.prefill_time(1024, 0) == bf16.prefill_time(1024, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_the_flag_as_vllm_takes_it_and_the_kv_cache_gains_the_freed_memory():
    args = build_parser().parse_args(["--model", "Qwen/Qwen3-32B-FP8", "--params-b", "32", "-q", "fp8"])
    cfg = config_from_args(args)
    assert cfg.quantization == "fp8"
    bf16 = SimConfig(model="Qwen/Qwen3-32B", params_b=32.0)
    cost = CostModel(32.0, 1, GPUS["h200"])
    assert kv_cache_capacity(cfg, cost) > kv_cache_capacity(bf16, cost)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--quantization", "fp3"])
