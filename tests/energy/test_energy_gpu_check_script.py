"""bench/gpu_energy_check.py runs its whole path against a fake GPU (the real one runs on a device)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

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

        def __getitem__(self, rows):
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
    code = load_script().main(["--load-s", "0.4", "--idle-s", "0.2", "--no-attribution"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu_energy_check OK meter=")
    assert "gpu=NVIDIA H200" in out[0]
    assert code == 0


def test_without_a_gpu_it_prints_a_skip_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert load_script().main([]) == 0
    assert capsys.readouterr().out.startswith("gpu_energy_check SKIP")


class FakeGpu:
    """A GPU that draws 450 W within 30 ms of a matmul and 90 W otherwise; its energy counter
    integrates that power and moves in 100 ms steps, like an H200's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy_until = 0.0
        self.t = time.monotonic()
        self.mj = 5e9
        self.step_mj = self.mj
        self.step_t = self.t

    def matmul(self) -> None:
        with self.lock:
            self._advance()
            self.busy_until = time.monotonic() + 0.03

    def watts(self) -> float:
        return 450.0 if time.monotonic() < self.busy_until else 90.0

    def _advance(self) -> None:
        now = time.monotonic()
        self.mj += self.watts() * (now - self.t) * 1000
        self.t = now
        if now - self.step_t >= 0.1:
            self.step_t, self.step_mj = now, self.mj

    def counter(self) -> int:
        with self.lock:
            self._advance()
            return int(self.step_mj)


def test_the_attribution_half_splits_what_the_nvml_meter_measured_and_loses_nothing(monkeypatch, capsys):
    gpu = FakeGpu()
    nvml = fake_pynvml(gpus=1)
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda h: gpu.counter()
    nvml.nvmlDeviceGetPowerUsage = lambda h: int(gpu.watts() * 1000)
    nvml.nvmlDeviceGetFieldValues = lambda h, ids: [
        SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=int(gpu.watts() * 1000)))
    ]
    nvml.nvmlDeviceGetUUID = lambda h: "GPU-0000-gpu"
    torch = fake_torch([False])
    torch.randn = lambda *shape, device=None, dtype=None: Matmul(gpu)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setitem(sys.modules, "torch", torch)
    code = load_script().main(["--load-s", "0.4", "--idle-s", "0.2", "--tolerance", "0.2", "--requests", "12",
                               "--concurrency", "4", "--settle-s", "2.5"])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    line = out[-1]
    assert "| attribution OK requests=12/12 final_measured=12 load=synthetic" in line, line
    assert code == 0, line
    fields = dict(f.split("=", 1) for f in line.split("| attribution OK ")[1].split() if "=" in f)
    assert float(fields["attributed"].rstrip("J")) > 0
    assert int(fields["shadow_steps"]) > 0  # the GPU did work while requests ran


class Matmul:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu

    def __matmul__(self, other):
        self.gpu.matmul()
        return self

    def __getitem__(self, rows):
        return self
