"""Small helpers the benchmark scripts share: a free port, waiting for a server to answer, a
closed-loop ``wrk`` run of one POST body, and rewriting a computed block of the README."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None = None, log: Path | None = None, path: str = "/readyz",
               timeout_s: float = 30.0) -> None:  # fmt: skip
    """Return once ``url + path`` answers 200; raise if ``proc`` exits first (with its ``log``) or
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text(errors='replace') if log else ''}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} not ready in {timeout_s:g} s")


def start_gateway(config: Path, log: Path, tree: Path, core: str = "1") -> tuple[subprocess.Popen, str]:
    """``nudge-gateway serve`` of the source tree ``tree`` on ``config``, pinned to ``core``; its
    process and URL once it is ready."""
    port = free_port()
    argv = ["taskset", "-c", core, sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return proc, url


def stop_all(procs) -> None:
    """Thaw (a frozen process cannot handle SIGTERM) and stop each process."""
    for p in procs:
        p.send_signal(signal.SIGCONT)
        p.terminate()
        p.wait(30)


# wrk's Lua: POST one JSON body; at the end, one line "JSON {...}" with the counts and latency.
_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, summary.errors.status + summary.errors.read + summary.errors.connect,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(path: Path, body: dict) -> Path:
    """Write the wrk script that POSTs ``body`` (JSON) to ``path``."""
    path.write_text(_WRK_LUA % json.dumps(body))
    return path


def wrk(url: str, lua: Path, seconds: float, connections: int = 16, core: str = "0") -> dict:
    """A closed-loop wrk run (one thread, on ``core``) against ``url``: requests/s, errors, p50/p99 ms."""
    out = subprocess.run(["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "-s",
                          str(lua), url], capture_output=True, text=True, timeout=120)  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("JSON "))
    r = json.loads(line[5:])
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "errors": r["errors"],
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000}  # fmt: skip


def readme_block(name: str, text: str, root: Path | None = None, doc: str = "README.md") -> None:
    """Replace the text of ``doc`` (the README unless named) between ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` with ``text`` wrapped at 100 columns (nothing happens where the markers
    are missing)."""
    readme = (root or Path(__file__).resolve().parents[1]) / doc
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = readme.read_text()
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        wrapped = "\n".join(textwrap.wrap(text, 100))
        readme.write_text(f"{head}{begin}\n{wrapped}\n{end}{rest.split(end, 1)[1]}")
