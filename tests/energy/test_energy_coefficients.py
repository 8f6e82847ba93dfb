"""The token-cost model: ML.ENERGY anchors, monotonic in size and batch; carbon and cost arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import BackendConfig
from gateway.energy.coefficients import TokenCosts
from gateway.energy.costs import co2e_grams, cost_usd, energy_report

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT.parent / "shared" / "mlenergy_v3_llm_configs.csv"


def per_output_token(costs: TokenCosts, batch: float, output_len: float, prompt: float = 256) -> float:
    """What ML.ENERGY reports: all energy per output token, the prompts' prefill included."""
    return costs.decode(batch, prompt + output_len / 2) + costs.prefill(prompt) / output_len


@pytest.mark.parametrize(
    "params, gpus, batch, output_len, measured",
    [
        (8.0, 1, 63.9, 397, 0.1186),  # Llama-3.1-8B-Instruct, H100, lm-arena-chat, max_num_seqs 64
        (8.0, 1, 8.0, 397, 0.4548),  # the same at max_num_seqs 8
        (70.0, 4, 8.0, 354, 3.7587),  # Llama-3.1-70B-Instruct, 4 x H100, max_num_seqs 8
        (70.0, 4, 255.3, 354, 0.4790),  # the same at max_num_seqs 256
        (32.0, 2, 63.8, 7058, 0.5360),  # Qwen3-32B, 2 x H100, gpqa (reasoning), max_num_seqs 64
    ],
)
def test_the_model_reproduces_ml_energy_rows(params, gpus, batch, output_len, measured):
    modelled = per_output_token(TokenCosts(params, gpus, "h100"), batch, output_len)
    assert modelled == pytest.approx(measured, rel=0.15)


def test_bigger_models_and_smaller_batches_cost_more_per_token():
    sizes = [TokenCosts(n) for n in (1.7, 8, 32, 70)]
    for batch in (1, 8, 64, 256):
        costs = [c.decode(batch) for c in sizes]
        assert costs == sorted(costs) and len(set(costs)) == 4
    for c in sizes:
        by_batch = [c.decode(b) for b in (1, 8, 64, 256)]
        assert by_batch == sorted(by_batch, reverse=True)
    small = TokenCosts(8)
    assert small.decode(64, 8000) > 1.5 * small.decode(64, 200)  # a long context costs more
    assert small.prefill(1) < 0.1 * small.decode(8)  # a prompt token is much cheaper at small batch
    assert TokenCosts(8, 1, "h200").decode(8) < TokenCosts(8, 1, "h100").decode(8)  # faster memory


def test_a_whole_request_adds_its_prefill_and_each_token_at_its_context():
    c = TokenCosts(8)
    joules = c.request(1000, 3, batch=16)
    expected = c.prefill(1000) + c.decode(16, 1000) + c.decode(16, 1001) + c.decode(16, 1002)
    assert joules == pytest.approx(expected)


@pytest.mark.skipif(not CSV.exists(), reason="the ML.ENERGY table is not next to the checkout")
def test_the_committed_constants_are_what_the_data_gives():
    result = subprocess.run([sys.executable, "bench/derive_energy_coefficients.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_co2e_and_cost_follow_codecarbon_and_the_backend_prices():
    assert co2e_grams(3.6e6) == pytest.approx(475.0)  # 1 kWh at the world average
    assert co2e_grams(3.6e6, 56.0, 1.2) == pytest.approx(56.0 * 1.2)  # France, with a PUE
    assert cost_usd(3.6e6, 3600.0, None, None) is None
    assert cost_usd(3.6e6, 1800.0, 2.0, None) == pytest.approx(1.0)  # half a GPU-hour at $2
    assert cost_usd(3.6e6, 0.0, None, 0.10, pue=1.5) == pytest.approx(0.15)  # facility energy is billed
    backend = BackendConfig(name="b", url="http://x:1", grid_g_per_kwh=100.0, pue=1.1, usd_per_kwh=0.2)
    report = energy_report(7.2e6, "measured", 10.0, backend)
    assert report.co2e_g == pytest.approx(220.0) and report.usd == pytest.approx(0.44)
    assert energy_report(3.6e6, "estimated", 0.0, None).co2e_g == pytest.approx(475.0)
