"""Test doubles for the energy tests: a fake ``pynvml`` module and a fake backend HTTP server."""

from __future__ import annotations

import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace


def fake_pynvml(gpus: int = 1, watts: float = 500.0, name: str = "NVIDIA H200") -> types.ModuleType:
    """A module with the slice of pynvml's API the NVML meter uses.

    Each GPU draws ``watts``; ``nvml.now`` is the clock the energy counter follows (set by the
    test), so readings are deterministic. Knobs per GPU: ``power_w``, ``counter_w`` (the
    counter's own power, to disagree with the power field), ``offset_mj``, ``field_ok``,
    ``usage_ok``, ``fail`` (an exception class raised by every call).
    """
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    for err in ("NotSupported", "FunctionNotFound", "GpuIsLost", "InvalidArgument", "DriverNotLoaded", "Unknown"):
        setattr(m, f"NVMLError_{err}", type(f"NVMLError_{err}", (NVMLError,), {}))
    m.NVMLError = NVMLError
    m.NVML_FI_DEV_POWER_INSTANT = 186
    m.now = 0.0
    m.calls = {"init": 0, "shutdown": 0, "energy": 0, "field": 0, "usage": 0}
    m.init_error = None
    m.gpus = [
        SimpleNamespace(power_w=watts, counter_w=watts, offset_mj=1e12, field_ok=True, usage_ok=True, fail=None, base_t=0.0)
        for _ in range(gpus)
    ]

    def check(h):
        if h.fail is not None:
            raise h.fail()

    def nvmlInit():
        m.calls["init"] += 1
        if m.init_error is not None:
            raise m.init_error()

    def nvmlShutdown():
        m.calls["shutdown"] += 1

    def nvmlDeviceGetCount():
        return len(m.gpus)

    def nvmlDeviceGetHandleByIndex(i):
        if i >= len(m.gpus):
            raise m.NVMLError_InvalidArgument()
        return m.gpus[i]

    def nvmlDeviceGetName(h):
        return name.encode()

    def nvmlDeviceGetFieldValues(h, ids):
        m.calls["field"] += 1
        check(h)
        assert ids == [186]
        ret = 0 if h.field_ok else 3  # NVML_ERROR_NOT_SUPPORTED in the field's own status
        return [SimpleNamespace(nvmlReturn=ret, valueType=1, value=SimpleNamespace(uiVal=int(h.power_w * 1000)))]

    def nvmlDeviceGetPowerUsage(h):
        m.calls["usage"] += 1
        check(h)
        if not h.usage_ok:
            raise m.NVMLError_NotSupported()
        return int(h.power_w * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(h):
        m.calls["energy"] += 1
        check(h)
        return int(h.offset_mj + h.counter_w * (m.now - h.base_t) * 1000) % 2**64

    for f in (nvmlInit, nvmlShutdown, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex, nvmlDeviceGetName,
              nvmlDeviceGetFieldValues, nvmlDeviceGetPowerUsage, nvmlDeviceGetTotalEnergyConsumption):  # fmt: skip
        setattr(m, f.__name__, f)
    return m


class FakeBackend:
    """A local HTTP server with a vLLM ``/metrics`` page and a DCGM page, both set by the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompt = 0
        self.gen = 0
        self.running = 0
        self.model = "Qwen/Qwen3-8B"
        self.gpu_mj = {"0": 5e9, "1": 7e9}  # gpu index -> counter
        self.gpu_w = {"0": 300.0, "1": 300.0}
        self.extra_dcgm = ""
        self.vllm_up = True
        self.dcgm_up = True
        self.connections = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                backend.connections += 1

            def do_GET(self):
                if self.path == "/metrics" and backend.vllm_up:
                    body = backend.vllm_text()
                elif self.path == "/dcgm/metrics" and backend.dcgm_up:
                    body = backend.dcgm_text()
                else:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def vllm_text(self) -> str:
        with self.lock:
            m = f'model_name="{self.model}",engine="0"'
            return (
                "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
                "# TYPE vllm:prompt_tokens_total counter\n"
                f"vllm:prompt_tokens_total{{{m}}} {float(self.prompt)}\n"
                f"vllm:prompt_tokens_total_created{{{m}}} 1.7e9\n"
                f"vllm:generation_tokens_total{{{m}}} {float(self.gen)}\n"
                f"vllm:num_requests_running{{{m}}} {float(self.running)}\n"
                f"vllm:num_requests_waiting{{{m}}} 0.0\n"
                f'vllm:time_to_first_token_seconds_bucket{{{m},le="0.1"}} 3.0\n'
            )

    def dcgm_text(self) -> str:
        with self.lock:
            lines = ["# TYPE DCGM_FI_DEV_POWER_USAGE gauge"]
            for gpu, w in self.gpu_w.items():
                lines.append(f'DCGM_FI_DEV_POWER_USAGE{{gpu="{gpu}",UUID="GPU-{gpu}",Hostname="node1"}} {w}')
            lines.append("# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter")
            for gpu, mj in self.gpu_mj.items():
                lines.append(f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="{gpu}",UUID="GPU-{gpu}",Hostname="node1"}} {int(mj)}')
            return "\n".join(lines) + "\n" + self.extra_dcgm

    def add_energy(self, joules: float) -> None:
        """Both GPUs together used ``joules`` (split evenly)."""
        for gpu in self.gpu_mj:
            self.gpu_mj[gpu] += joules * 1000.0 / len(self.gpu_mj)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
