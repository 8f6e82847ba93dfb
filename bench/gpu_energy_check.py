"""Check the NVML meter against the GPU's own energy counter under real load. One line of output.

    python bench/gpu_energy_check.py [--gpu 0] [--load-s 5] [--idle-s 2] [--tolerance 0.05]

On a machine with an NVIDIA GPU, PyTorch and nvidia-ml-py: runs the gateway's ``NvmlMeter`` in a
background thread exactly as the sampler does (instant power every 100 ms, the energy counter
about once a second), drives bf16 8192x8192 matmuls for ``--load-s`` seconds and then idles for
``--idle-s``, and compares the meter's energy over the window with the GPU's own counter
(``nvmlDeviceGetTotalEnergyConsumption``) read at the window's edges. The edges are aligned
with counter updates (~every 100 ms) so the counter's granularity does not count as error.
It also reports the power-only integral (no counter correction), which FACTS.md found ~1 %
below the counter on an H200.

    gpu_energy_check OK meter=3421.5J counter=3455.0J diff=0.97% power_only=3390.2J (-1.88%) gpu=NVIDIA H200 ...

Exit 0 when within ``--tolerance`` (or when there is nothing to check: a SKIP line), 1 otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

TICK_S = 0.1


def say(status: str, text: str) -> None:
    print(f"gpu_energy_check {status} {text}", flush=True)


class Timeline:
    """A meter read every ``TICK_S`` from its own thread; energy at any moment by interpolation."""

    def __init__(self, meter) -> None:
        self.meter = meter
        self.t: list[float] = []
        self.j: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            reading = self.meter.read(now)
            if reading is not None:
                self.t.append(reading.t)
                self.j.append(reading.joules)
            next_t += TICK_S
            self.stop.wait(max(0.0, next_t - time.monotonic()))

    def at(self, t: float) -> float:
        i = bisect.bisect_left(self.t, t)
        if i == 0:
            return self.j[0]
        if i >= len(self.t):
            return self.j[-1]
        t0, t1, j0, j1 = self.t[i - 1], self.t[i], self.j[i - 1], self.j[i]
        return j0 + (j1 - j0) * (t - t0) / (t1 - t0)


def counter_edge(nvml, handle) -> tuple[float, float]:
    """(monotonic time, mJ) at the moment the energy counter next moves."""
    first = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        value = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        if value != first:
            return time.monotonic(), float(value)
    return time.monotonic(), float(first)


def nvml_index(torch, nvml, cuda_index: int) -> int:
    """The NVML index of CUDA device ``cuda_index`` (they differ under CUDA_VISIBLE_DEVICES)."""
    uuid = str(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", "") or "")
    if uuid:
        for i in range(nvml.nvmlDeviceGetCount()):
            name = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
                return i
    return cuda_index


def load(torch, device, seconds: float) -> int:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        for _ in range(8):
            a @ b
        torch.cuda.synchronize(device)
        n += 8
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    ap.add_argument("--load-s", type=float, default=5.0)
    ap.add_argument("--idle-s", type=float, default=2.0)
    ap.add_argument("--tolerance", type=float, default=0.05, help="largest relative difference for OK")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        say("SKIP", "PyTorch is not installed")
        return 0
    if not torch.cuda.is_available():
        say("SKIP", "no CUDA GPU visible")
        return 0
    try:
        import pynvml as nvml
    except ImportError:
        say("SKIP", "nvidia-ml-py (pynvml) is not installed")
        return 0
    from gateway.energy.meters import NvmlMeter

    nvml.nvmlInit()
    try:
        index = nvml_index(torch, nvml, args.gpu)
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        gpu = nvml.nvmlDeviceGetName(handle)
        gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
        meter = NvmlMeter([index])
        power_only = NvmlMeter([index], counter_every_s=1e12)  # counter read once, at the start
        for m in (meter, power_only):
            m.open()
            if not m.available:
                say("FAIL", f"NVML meter unavailable: {m.reason} gpu={gpu}")
                return 1
        device = torch.device("cuda", args.gpu)
        load(torch, device, min(1.0, args.load_s))  # warm up: clocks, cuBLAS handles, allocations
        timelines = [Timeline(meter), Timeline(power_only)]
        for tl in timelines:
            tl.thread.start()
        time.sleep(3 * TICK_S)

        t0, c0 = counter_edge(nvml, handle)
        matmuls = load(torch, device, args.load_s)
        time.sleep(args.idle_s)
        t1, c1 = counter_edge(nvml, handle)
        time.sleep(2 * TICK_S)  # let the timelines pass t1
        for tl in timelines:
            tl.stop.set()
            tl.thread.join()
        for m in (meter, power_only):
            m.close()
    finally:
        nvml.nvmlShutdown()

    counter_j = (c1 - c0) / 1000.0
    meter_j = timelines[0].at(t1) - timelines[0].at(t0)
    power_j = timelines[1].at(t1) - timelines[1].at(t0)
    if counter_j <= 0:
        say("FAIL", f"the GPU's energy counter did not move (counter={counter_j:.1f}J) gpu={gpu}")
        return 1
    diff = (meter_j - counter_j) / counter_j
    status = "OK" if abs(diff) <= args.tolerance else "FAIL"
    say(
        status,
        f"meter={meter_j:.1f}J counter={counter_j:.1f}J diff={abs(diff):.2%} "
        f"power_only={power_j:.1f}J ({(power_j - counter_j) / counter_j:+.2%}) gpu={gpu} "
        f"window={t1 - t0:.2f}s load={args.load_s:g}s idle={args.idle_s:g}s matmuls={matmuls} "
        f"avg_power={counter_j / (t1 - t0):.0f}W",
    )
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    raise SystemExit(main())
