"""Start real gateways on loopback for end-to-end tests.

``GatewayProcess`` runs ``nudge-gateway serve`` as a subprocess (what users run);
``InProcessGateway`` runs the same ASGI app on uvicorn in a thread of the test process,
for tests that need to look inside (its metrics registry, its parts).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def write_config(tmp_path: Path, config: dict, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _ready(url: str, path: str) -> bool:
    try:
        return httpx.get(f"{url}{path}", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class GatewayProcess:
    def __init__(self, config_path: Path, ready_path: str = "/readyz", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = config_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", str(self.port),
             "--log-level", "warning"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        try:
            wait_until(lambda: self.proc.poll() is not None or _ready(self.url, ready_path), 20, what="gateway")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class InProcessGateway:
    """The gateway's ASGI app on uvicorn in a background thread with its own event loop."""

    def __init__(self, config):
        import uvicorn

        from gateway.app import Gateway

        self.gateway = Gateway(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.gateway, host="127.0.0.1", port=self.port, loop="asyncio", lifespan="on",
                           access_log=False, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 20, what="in-process gateway")
        if not self.server.started:
            raise RuntimeError("in-process gateway failed to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
