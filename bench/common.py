"""Small helpers the benchmark scripts share: a free port, and waiting for a server to answer."""

from __future__ import annotations

import socket
import subprocess
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
