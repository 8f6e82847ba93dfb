"""bench/gpu_energy_check.py runs its whole path against a fake GPU (the real one runs on a device)."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

from .fakes import fake_pynvml

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_energy_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_energy_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_torch(busy: list[bool]) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.bfloat16 = "bf16"

    class Tensor:
        def __matmul__(self, other):
            busy[0] = True
            return self

    class Cuda:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def get_device_properties(i):
            return types.SimpleNamespace(uuid="0000-gpu")

        @staticmethod
        def synchronize(device=None):
            time.sleep(0.001)

    torch.cuda = Cuda
    torch.device = lambda kind, index: (kind, index)
    torch.randn = lambda *shape, device=None, dtype=None: Tensor()
    return torch


def test_the_check_compares_the_meter_with_the_counter_and_prints_one_line(monkeypatch, capsys):
    nvml = fake_pynvml(gpus=1, watts=400.0)
    start = time.monotonic()
    gpu = nvml.gpus[0]
    # the counter follows real time, in 100 ms steps, like an H200's
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda h: int(gpu.offset_mj + 400.0 * 1000 * ((time.monotonic() - start) // 0.1) * 0.1)
    nvml.nvmlDeviceGetUUID = lambda h: "GPU-0000-gpu"
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setitem(sys.modules, "torch", fake_torch([False]))
    code = load_script().main(["--load-s", "0.4", "--idle-s", "0.2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu_energy_check OK meter=")
    assert "gpu=NVIDIA H200" in out[0]
    assert code == 0


def test_without_a_gpu_it_prints_a_skip_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert load_script().main([]) == 0
    assert capsys.readouterr().out.startswith("gpu_energy_check SKIP")
