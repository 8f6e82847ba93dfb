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

Then the second half: **the attributed sum against what was metered**. A gateway runs in this
process with the NVML meter on the same GPU, in front of a backend, and a short mixed load goes
through it (short and long prompts, short and long answers, streaming and not). With
``--vllm-url`` (a vLLM server already running on this GPU, ``--vllm-model`` its model) the load
is real inference. Otherwise a simulated vLLM (realistic speed, 8B) answers, and a thread drives
the GPU with matmuls whose size follows the simulator's running batch, so the GPU draws more
when more requests run. It checks that every request got a final, measured ledger row, that the
ledger's sum equals what the gateway attributed, that attributed + idle + other (+ carried)
equals the meter's total within ``--balance-tolerance``, and reports that total against the
GPU's own counter over the gateway's life (the edges add about a second of idle power). It
cannot check each request's share: a real GPU has no per-request truth (the simulator's
``bench/attribution_eval.py`` does that). ``--no-attribution`` skips this half.

    gpu_energy_check OK meter=3421.5J counter=3455.0J diff=0.97% ... | attribution OK requests=32/32 ...

Exit 0 when both halves are within their tolerances (or when there is nothing to check: a SKIP
line), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import sqlite3
import sys
import tempfile
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


SYNTH_MODEL = ("Qwen/Qwen3-8B", 8.0)  # the simulated backend of the synthetic load
LONG_PROMPT = " ".join(["The ledger records each request with its model, its tokens and its energy."] * 120)


class Shadow:
    """Real GPU work that follows a simulated backend's running batch (``/load``, every 20 ms):
    per step a (128 x running) x 8192 by 8192 x 8192 bf16 matmul, nothing while none runs."""

    def __init__(self, torch, device, url: str) -> None:
        import httpx

        self.torch, self.device = torch, device
        self.http = httpx.Client(base_url=url, timeout=2.0)
        self.running = 0
        self.steps = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._poll, self._work)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.http.close()

    def _poll(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.running = int(self.http.get("/load").json().get("server_load", 0))
            except Exception:  # noqa: BLE001 - the simulator stopping ends the load
                self.running = 0

    def _work(self) -> None:
        torch = self.torch
        a = torch.randn(128 * 64, 8192, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=self.device, dtype=torch.bfloat16)
        while not self.stop.is_set():
            n = min(self.running, 64)
            if n == 0:
                self.stop.wait(0.005)
                continue
            a[: 128 * n] @ b
            torch.cuda.synchronize(self.device)
            self.steps += 1


def plan_load(n: int, seed: int = 7) -> list[dict]:
    """Short and long prompts, short and long answers, streaming and not."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = LONG_PROMPT if rng.random() < 0.3 else "Name one prime number."
        out.append({"messages": [{"role": "user", "content": f"{prompt} (#{i})"}],
                    "max_tokens": rng.choice([16, 64, 256, 512]), "stream": rng.random() < 0.6})  # fmt: skip
    return out


async def drive(url: str, model: str, bodies: list[dict], concurrency: int) -> list[str]:
    """Send every body through the gateway; the request ids that got an answer."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        async with sem:
            async with client.stream("POST", "/v1/chat/completions", json={"model": model, **body}) as r:
                async for _ in r.aiter_bytes():
                    pass
                if r.status_code == 200:
                    ids.append(r.headers.get("x-request-id", ""))

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(one(client, b) for b in bodies))
    return ids


class InProcessGateway:
    """The gateway on uvicorn in a thread of this process (so it reads this process's NVML)."""

    def __init__(self, config) -> None:
        import socket

        import uvicorn

        from gateway.app import Gateway

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.gateway = Gateway(config)
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.gateway, host="127.0.0.1", port=port, loop="asyncio",
                                                    lifespan="on", access_log=False, log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("the gateway did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def attribution_check(torch, nvml, handle, index: int, args) -> tuple[str, str]:
    """The second half (see the module docstring): (status, text)."""
    from gateway.config import BackendConfig, Config, FeaturesConfig, LedgerConfig, ModelConfig, NvmlMeterConfig, ServerConfig

    sim = shadow = gw = None
    tmp = Path(tempfile.mkdtemp(prefix="gpu-energy-check-"))
    try:
        if args.vllm_url:
            url, model, params, load = args.vllm_url.rstrip("/"), args.vllm_model, args.params_b, "vllm"
        else:
            from gateway.sim.process import start_sim

            model, params = SYNTH_MODEL
            sim = start_sim(["--model", model, "--params-b", str(params), "--speed", "realistic", "--seed", "1",
                             "--enable-server-load-tracking"])
            url, load = sim.url, "synthetic"
            shadow = Shadow(torch, torch.device("cuda", args.gpu), url)
            shadow.start()
        config = Config(
            features=FeaturesConfig(routing=False, policy=False),
            server=ServerConfig(health_interval_s=0.5, load_interval_s=0.5),
            backends=[BackendConfig(name="gpu", url=url, models=[model], meter=NvmlMeterConfig(type="nvml", gpus=[index]))],
            models={model: ModelConfig(params_b=params)},
            ledger=LedgerConfig(path=str(tmp / "usage.db")),
        )
        c0 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        gw = InProcessGateway(config)
        ids = asyncio.run(drive(gw.url, model, plan_load(args.requests), args.concurrency))
        time.sleep(args.settle_s)  # every request past the attribution horizon, then idle
        book = gw.gateway.energy.samplers["gpu"].book
        gw.stop()
        gw = None
        c1 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    finally:
        if gw is not None:
            gw.stop()
        if shadow is not None:
            shadow.close()
        if sim is not None:
            sim.stop()
    with sqlite3.connect(tmp / "usage.db") as conn:
        rows = conn.execute("SELECT request_id, energy_j, energy_source FROM requests WHERE status = 200").fetchall()
    final = [r for r in rows if r[0] in set(ids) and r[1] is not None]
    measured = sum(1 for r in final if r[2] == "measured")
    ledger_j = sum(r[1] for r in final)
    split_j = book.attributed_j + book.idle_j + book.other_j + book.carried_j
    counter_j = (c1 - c0) / 1000.0
    d_ledger = abs(ledger_j - book.attributed_j) / max(book.attributed_j, 1e-9)
    d_balance = abs(split_j - book.total_j) / max(book.total_j, 1e-9)
    ok = (len(ids) == args.requests and measured == len(ids) and d_ledger <= args.balance_tolerance
          and d_balance <= args.balance_tolerance and book.attributed_j > 0)  # fmt: skip
    text = (
        f"requests={len(ids)}/{args.requests} final_measured={measured} load={load} ledger={ledger_j:.1f}J "
        f"attributed={book.attributed_j:.1f}J (ledger diff {d_ledger:.2%}) idle={book.idle_j:.1f}J "
        f"other={book.other_j:.1f}J carried={book.carried_j:.1f}J metered={book.total_j:.1f}J "
        f"(split diff {d_balance:.2%}) counter={counter_j:.1f}J ({(book.total_j - counter_j) / max(counter_j, 1e-9):+.2%}, "
        f"edges included)"
    )
    if shadow is not None:
        text += f" shadow_steps={shadow.steps}"
    return ("OK" if ok else "FAIL"), text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index")
    ap.add_argument("--load-s", type=float, default=5.0)
    ap.add_argument("--idle-s", type=float, default=2.0)
    ap.add_argument("--tolerance", type=float, default=0.05, help="largest relative difference for OK")
    ap.add_argument("--no-attribution", action="store_true", help="only the meter against the counter")
    ap.add_argument("--vllm-url", help="a vLLM server running on this GPU (default: a synthetic load)")
    ap.add_argument("--vllm-model", default="", help="the model it serves")
    ap.add_argument("--params-b", type=float, default=8.0, help="its size in billions of parameters")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--settle-s", type=float, default=3.0)
    ap.add_argument("--balance-tolerance", type=float, default=0.01)
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
        counter_j = (c1 - c0) / 1000.0
        meter_j = timelines[0].at(t1) - timelines[0].at(t0)
        power_j = timelines[1].at(t1) - timelines[1].at(t0)
        if counter_j <= 0:
            say("FAIL", f"the GPU's energy counter did not move (counter={counter_j:.1f}J) gpu={gpu}")
            return 1
        diff = (meter_j - counter_j) / counter_j
        status = "OK" if abs(diff) <= args.tolerance else "FAIL"
        text = (
            f"meter={meter_j:.1f}J counter={counter_j:.1f}J diff={abs(diff):.2%} "
            f"power_only={power_j:.1f}J ({(power_j - counter_j) / counter_j:+.2%}) gpu={gpu} "
            f"window={t1 - t0:.2f}s load={args.load_s:g}s idle={args.idle_s:g}s matmuls={matmuls} "
            f"avg_power={counter_j / (t1 - t0):.0f}W"
        )
        if not args.no_attribution:
            try:
                half, detail = attribution_check(torch, nvml, handle, index, args)
            except Exception as exc:  # noqa: BLE001 - one verdict line whatever went wrong
                half, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            text += f" | attribution {half} {detail}"
            status = "OK" if status == "OK" and half == "OK" else "FAIL"
    finally:
        nvml.nvmlShutdown()
    say(status, text)
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    raise SystemExit(main())
