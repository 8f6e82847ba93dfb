"""The meters: NVML with a fake pynvml, DCGM against a local exporter page, the estimate."""

from __future__ import annotations

import sys

import pytest

from gateway.energy.coefficients import TokenCosts
from gateway.energy.meters import DcgmMeter, EnergyCounter, EstimateMeter, NvmlMeter
from gateway.energy.scrape import VllmCounters, parse_dcgm, parse_vllm

from .fakes import FakeBackend, fake_pynvml


@pytest.fixture
def nvml(monkeypatch):
    fake = fake_pynvml(gpus=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def drive(meter, nvml, until: float, step: float = 0.1):
    reading = None
    t = nvml.now
    while t < until - 1e-9:
        t = round(t + step, 9)
        nvml.now = t
        reading = meter.read(t)
    return reading


# ---------------------------------------------------------------- NVML


def test_nvml_meter_loads_pynvml_lazily_and_integrates_both_gpus(nvml):
    meter = NvmlMeter([0, 1])
    meter.open()
    assert meter.available and meter.gpu_names == ["NVIDIA H200", "NVIDIA H200"]
    meter.read(0.0)
    reading = drive(meter, nvml, 3.0)
    assert reading.joules == pytest.approx(2 * 500.0 * 3.0, rel=0.01)
    assert reading.watts == pytest.approx(1000.0)
    assert nvml.calls["field"] > 0 and nvml.calls["usage"] == 0  # instant power, field 186


def test_the_energy_counter_is_read_about_once_a_second_and_wins_over_the_power_integral(nvml):
    for gpu in nvml.gpus:
        gpu.power_w, gpu.counter_w = 400.0, 500.0  # the power reading is 20 % low
    meter = NvmlMeter([0, 1], counter_every_s=1.0)
    meter.open()
    meter.read(0.0)
    calls = nvml.calls["energy"]
    reading = drive(meter, nvml, 5.0)
    assert nvml.calls["energy"] - calls == 2 * 5  # two GPUs, once a second (not every 100 ms)
    assert reading.joules == pytest.approx(2 * 500.0 * 5.0, rel=0.01)


def test_a_counter_that_wraps_is_not_a_negative_or_huge_jump(nvml):
    for gpu in nvml.gpus:
        gpu.offset_mj = 2**64 - 1_200_000  # wraps after 1.2 kJ... of each GPU
    meter = NvmlMeter([0, 1])
    meter.open()
    meter.read(0.0)
    reading = drive(meter, nvml, 6.0)  # 3 kJ per GPU: past the wrap
    assert reading.joules == pytest.approx(2 * 500.0 * 6.0, rel=0.01)


def test_a_driver_reload_resets_the_counter_without_double_counting(nvml):
    meter = NvmlMeter([0, 1])
    meter.open()
    meter.read(0.0)
    drive(meter, nvml, 2.0)
    for gpu in nvml.gpus:  # the counter restarts from zero at t = 2
        gpu.offset_mj, gpu.base_t = 0.0, 2.0
    reading = drive(meter, nvml, 5.0)
    assert reading.joules == pytest.approx(2 * 500.0 * 5.0, rel=0.02)
    assert all(g.counter.resets == 1 for g in meter._gpus)


def test_readings_never_go_back(nvml):
    for gpu in nvml.gpus:
        gpu.power_w, gpu.counter_w = 600.0, 300.0  # the integral runs ahead; the counter pulls it back
    meter = NvmlMeter([0, 1])
    meter.open()
    meter.read(0.0)
    last = 0.0
    for i in range(1, 40):
        nvml.now = i * 0.1
        value = meter.read(nvml.now).joules
        assert value >= last
        last = value


def test_instant_power_unsupported_falls_back_to_power_usage(nvml):
    nvml.gpus[0].field_ok = False
    meter = NvmlMeter([0])
    meter.open()
    meter.read(0.0)
    reading = drive(meter, nvml, 1.0)
    assert nvml.calls["usage"] > 0
    assert reading.watts == pytest.approx(500.0)


def test_no_power_at_all_reads_the_counter_every_tick(nvml):
    nvml.gpus[0].field_ok = nvml.gpus[0].usage_ok = False
    meter = NvmlMeter([0])
    meter.open()
    meter.read(0.0)
    reading = drive(meter, nvml, 2.0)
    assert reading.joules == pytest.approx(1000.0, rel=0.01)
    assert nvml.calls["energy"] >= 20


def test_a_missing_gpu_makes_the_meter_unavailable(nvml):
    meter = NvmlMeter([0, 3])
    meter.open()
    assert not meter.available
    assert "GPU 3" in meter.reason
    assert meter.read(1.0) is None


def test_nvml_that_cannot_start_makes_the_meter_unavailable(nvml):
    nvml.init_error = nvml.NVMLError_DriverNotLoaded
    meter = NvmlMeter([0])
    meter.open()
    assert not meter.available and meter.reason.startswith("NVML")


def test_without_nvidia_ml_py_the_meter_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    meter = NvmlMeter([0])
    meter.open()
    assert not meter.available and "not installed" in meter.reason


def test_transient_errors_keep_the_meter_going_and_lasting_ones_stop_it(nvml):
    meter = NvmlMeter([0])
    meter.open()
    meter.read(0.0)
    drive(meter, nvml, 1.0)
    nvml.gpus[0].fail = nvml.NVMLError_Unknown
    for _ in range(3):
        nvml.now += 0.1
        assert meter.read(nvml.now) is None
    nvml.gpus[0].fail = None
    reading = drive(meter, nvml, 3.0)
    assert meter.available
    assert reading.joules == pytest.approx(1500.0, rel=0.02)  # the gap is covered by the counter
    nvml.gpus[0].fail = nvml.NVMLError_GpuIsLost
    for _ in range(NvmlMeter.MAX_FAILURES):
        nvml.now += 0.1
        meter.read(nvml.now)
    assert not meter.available and "no NVML reading" in meter.reason


def test_close_shuts_nvml_down(nvml):
    meter = NvmlMeter([0])
    meter.open()
    meter.close()
    assert nvml.calls["shutdown"] == 1


# ---------------------------------------------------------------- counters


def test_energy_counter_restart_to_an_implausible_value_uses_the_fallback():
    c = EnergyCounter()
    c.update(5_000_000, 0.0)
    assert c.update(6_000_000, 1.0) == pytest.approx(1000.0)
    # goes back, but not to ~0: 3 kJ since a restart one second ago is 3 kW; use power x time
    assert c.update(3_000_000, 2.0, fallback_j=700.0) == pytest.approx(700.0)
    assert c.resets == 1
    # a forward jump no GPU could make is a glitch too
    assert c.update(4_000_000_000, 3.0, fallback_j=650.0) == pytest.approx(650.0)
    assert c.joules == pytest.approx(1000.0 + 700.0 + 650.0)


# ---------------------------------------------------------------- DCGM


@pytest.fixture
def backend():
    b = FakeBackend()
    yield b
    b.close()


def test_dcgm_page_parsing_selects_gpus_by_label():
    page = (
        '# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",Hostname="n1",pod="vllm-large-0"} 1000\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b",Hostname="n1",pod="vllm-large-0"} 2000\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-c",Hostname="n2",pod="vllm-small-0"} 4000\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a",Hostname="n1",pod="vllm-large-0"} 350.5\n'
        'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_EXTRA{gpu="0",UUID="GPU-d"} 9\n'
    )
    assert parse_dcgm(page, {}) == {"GPU-a": (1000, 350.5), "GPU-b": (2000, None), "GPU-c": (4000, None)}
    assert set(parse_dcgm(page, {"pod": ["vllm-large-0"]})) == {"GPU-a", "GPU-b"}
    assert set(parse_dcgm(page, {"Hostname": ["n1", "n2"], "gpu": ["0"]})) == {"GPU-a", "GPU-c"}
    assert parse_dcgm(page, {"pod": ["nope"]}) == {}


def test_dcgm_meter_reads_a_live_exporter_over_one_kept_alive_connection(backend):
    meter = DcgmMeter(f"{backend.url}/dcgm/metrics", {"gpu": ["0", "1"]})
    meter.open()
    first = meter.read(0.0)
    assert first.joules == 0.0 and first.watts == pytest.approx(600.0)
    backend.add_energy(600.0)
    second = meter.read(1.0)
    assert second.joules == pytest.approx(600.0) and second.fresh
    third = meter.read(1.1)  # the exporter's counter has not moved yet
    assert third.joules == pytest.approx(600.0) and not third.fresh
    assert backend.connections == 1
    meter.close()


def test_dcgm_meter_selects_only_its_gpus(backend):
    backend.gpu_mj["2"] = 1e9
    backend.gpu_w["2"] = 300.0
    meter = DcgmMeter(f"{backend.url}/dcgm/metrics", {"gpu": ["2"]})
    meter.read(0.0)
    backend.add_energy(300.0)  # 100 J on each of the three GPUs
    assert meter.read(1.0).joules == pytest.approx(100.0)


def test_dcgm_exporter_restart_does_not_double_count(backend):
    meter = DcgmMeter(f"{backend.url}/dcgm/metrics")
    meter.read(0.0)
    backend.add_energy(200.0)
    assert meter.read(1.0).joules == pytest.approx(200.0)
    with backend.lock:  # driver reload: every counter restarts from zero, then 50 J more
        backend.gpu_mj = {"0": 25_000.0, "1": 25_000.0}
    assert meter.read(2.0).joules == pytest.approx(250.0)
    backend.add_energy(100.0)
    assert meter.read(3.0).joules == pytest.approx(350.0)


def test_dcgm_meter_unreachable_or_unmatched_returns_none_with_a_reason(backend):
    backend.dcgm_up = False
    meter = DcgmMeter(f"{backend.url}/dcgm/metrics")
    assert meter.read(0.0) is None and "503" in meter.error
    backend.dcgm_up = True
    meter = DcgmMeter(f"{backend.url}/dcgm/metrics", {"pod": ["elsewhere"]})
    assert meter.read(0.0) is None and "matches" in meter.error
    dead = DcgmMeter("http://127.0.0.1:9/metrics", timeout=0.5)
    assert dead.read(0.0) is None and dead.error


# ---------------------------------------------------------------- vLLM page and the estimate


def test_vllm_counters_are_summed_over_engines_and_other_series_ignored():
    page = (
        '# HELP vllm:prompt_tokens_total x\n'
        'vllm:prompt_tokens_total{model_name="m",engine="0"} 100.0\n'
        'vllm:prompt_tokens_total{model_name="m",engine="1"} 50.0\n'
        'vllm:prompt_tokens_total_created{model_name="m",engine="0"} 1.7e9\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 1000.0\n'
        'vllm:num_requests_running{model_name="m",engine="0"} 3.0\n'
        'vllm:num_requests_running{model_name="m",engine="1"} 2.0\n'
        'vllm:num_requests_waiting{model_name="m",engine="0"} 1.0\n'
        'vllm:request_prompt_tokens_sum{model_name="m",engine="0"} 9999.0\n'
    )
    c = parse_vllm(page)
    assert (c.prompt_tokens, c.generation_tokens, c.running, c.waiting) == (150.0, 1000.0, 5.0, 1.0)
    assert c.models == ["m"]
    assert parse_vllm("# nothing here\nprocess_cpu_seconds_total 3\n") is None


def test_estimate_meter_prices_tokens_by_model_size_and_batch():
    small, large = TokenCosts(8.0), TokenCosts(70.0)

    def joules(costs, batch):
        meter = EstimateMeter(lambda: costs)
        meter.read(0.0, VllmCounters(0, 0, batch, 0))
        return meter.read(1.0, VllmCounters(0, 1000, batch, 0)).joules

    assert joules(large, 8) > 5 * joules(small, 8)  # a bigger model costs more per token
    assert joules(small, 8) > 3 * joules(small, 128)  # a smaller batch costs more per token
    idle = EstimateMeter(lambda: small)
    idle.read(0.0, VllmCounters(0, 0, 0, 0))
    assert idle.read(2.0, VllmCounters(0, 0, 0, 0)).joules == pytest.approx(2 * 85.0)  # H200 idle power
    assert idle.measured is False
