"""Run a simulator as a subprocess (tests, the demo): ``with start_sim([...]) as sim: sim.url``.

Standard library only, so importing it costs nothing. The child is ``python -m gateway.sim
ARGS --port 0``; ``start_sim`` returns once it printed ``SIM READY http://HOST:PORT`` and raises
``SimStartError`` with the child's stderr if it dies or stays silent first.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY = "SIM READY "


class SimStartError(RuntimeError):
    pass


class SimProcess:
    """A running simulator: ``url``, ``pid``, ``stop()`` (SIGTERM then SIGKILL), ``kill()`` (SIGKILL)."""

    def __init__(self, proc: subprocess.Popen, url: str, stderr_file) -> None:
        self.proc = proc
        self.url = url
        self.pid = proc.pid
        self._stderr = stderr_file

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit status."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def kill(self) -> int:
        """SIGKILL, as a crash would (for failure tests)."""
        if self.alive:
            self.proc.kill()
        return self.proc.wait()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._stderr.close()

    # --- conveniences for tests and the demo --------------------------------------------------
    def request(self, method: str, path: str, body: object | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str) -> dict:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def energy(self) -> dict:
        """The ground truth (``GET /debug/energy``)."""
        return self.get_json("/debug/energy")

    def fault(self, mode: str, **spec) -> dict:
        """Inject a fault (``POST /debug/fault``), e.g. ``sim.fault("die_midstream", after_chunks=3)``."""
        status, body = self.request("POST", "/debug/fault", {"mode": mode, **spec})
        if status != 200:
            raise RuntimeError(f"fault {mode}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def clear_faults(self) -> None:
        """Clear injected faults (by signal, which also works while connections are refused)."""
        self.proc.send_signal(signal.SIGUSR1)

    def reset_counter(self) -> dict:
        """Simulate a driver reload: the DCGM energy counters restart near zero."""
        status, body = self.request("POST", "/debug/reset-counter", {})
        if status != 200:
            raise RuntimeError(f"reset-counter: HTTP {status}")
        return json.loads(body)


def start_sim(args: list[str], timeout: float = 15.0, env: dict[str, str] | None = None) -> SimProcess:
    """Start ``python -m gateway.sim ARGS --port 0`` and wait for it to listen."""
    cmd = [sys.executable, "-m", "gateway.sim", *args]
    if "--port" not in args:
        cmd += ["--port", "0"]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), child_env.get("PYTHONPATH")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (SimProcess owns it; closed on exit or a failed start)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr_file, stdin=subprocess.DEVNULL, env=child_env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps reading so the child never blocks on a full pipe
        assert proc.stdout is not None  # stdout=PIPE
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=pump, name=f"sim-stdout-{proc.pid}", daemon=True).start()
    sim = SimProcess(proc, "", stderr_file)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SimStartError(f"simulator did not get ready in {timeout}s: {sim.stderr()[-2000:]}") from None
            if line is None:
                proc.wait()
                raise SimStartError(f"simulator exited with status {proc.returncode}: {sim.stderr()[-2000:]}")
            if line.startswith(READY):
                sim.url = line[len(READY) :].strip()
                return sim
    except BaseException:
        sim.kill()
        stderr_file.close()
        raise
