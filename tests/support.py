"""Start real gateways on loopback for end-to-end tests.

``GatewayProcess`` runs ``nudge-gateway serve`` as a subprocess (what users run);
``InProcessGateway`` runs the same ASGI app on uvicorn in a thread of the test process,
for tests that need to look inside (its metrics registry, its parts).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from gateway.sim.process import start_sim

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

    def __init__(self, config, **options):
        import uvicorn

        from gateway.app import Gateway

        self.gateway = Gateway(config, **options)  # options: Gateway's keywords (span_exporter)
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


# ---------------------------------------------------------------- simulated backends for e2e tests

# A speed-up keeps generation fast in tests while keeping batching and timing realistic in shape.
SPEED = "20"

SMALL = "Qwen/Qwen3-1.7B"
MEDIUM = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "Qwen/Qwen3-32B"


def backend_entry(name: str, sim, **extra) -> dict:
    return {"name": name, "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}, **extra}


def base_config(tmp_path, backends: list[dict], **sections) -> dict:
    config = {
        "server": {"health_interval_s": 0.2, "load_interval_s": 0.2},
        "backends": backends,
        "ledger": {"path": str(tmp_path / "usage.db")},
    }
    config.update(sections)
    return config


def sim_counter(sim, name: str, **labels) -> float:
    """Sum of a counter on a simulator's /metrics over the series matching ``labels``."""
    total = 0.0
    for line in httpx.get(f"{sim.url}/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def twin_backends(tmp_path):
    """Two instant simulators serving the same model behind one gateway whose health checks are
    slow, so the gateway tries ``a`` first and learns of a failure only from the request itself."""
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as a, \
            start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as b:
        config = base_config(tmp_path, [backend_entry("a", a), backend_entry("b", b)],
                             server={"health_interval_s": 30, "load_interval_s": 30})
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            yield gw, a, b


# ---------------------------------------------------------------- PostgreSQL (the shared ledger)

# The suite's PostgreSQL (.ci/run starts it when down): trust auth on loopback, as root.
PG_ADMIN_URL = os.environ.get("NUDGE_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/postgres")


def pg_database(name: str) -> str:
    """Create an empty database; its URL."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TcpRelay:
    """A TCP relay to a server that a test can cut (every connection closed, new ones closed at
    once: what a client sees when the server or the network goes away) and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        """``url`` (postgresql://user@host:port/db) through this relay."""
        head, _, db = url.rpartition("/")
        user = head.split("//", 1)[1].split("@", 1)[0]
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
