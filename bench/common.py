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


def compare_arms(configs: dict[str, dict], body: dict, rounds: int, duration: float, tmp: Path,
                 tree: Path | None = None) -> dict:  # fmt: skip
    """One gateway per config ("arm"), each pinned to core 1 and frozen (SIGSTOP) while another is
    measured; closed-loop ``wrk`` POSTs ``body`` to /v1/chat/completions from core 0. Rounds rotate
    the order. The first arm is the baseline: medians per arm and ratios of the others to it."""
    import statistics

    import yaml

    lua = wrk_script(tmp / "arms.lua", body)
    procs: dict[str, subprocess.Popen] = {}
    urls: dict[str, str] = {}
    results: list[dict] = []
    root = tree or Path(__file__).resolve().parents[1]
    try:
        for arm, config in configs.items():
            path = tmp / f"gateway-{arm}.yaml"
            path.write_text(yaml.safe_dump(config))
            procs[arm], urls[arm] = start_gateway(path, tmp / f"gateway-{arm}.log", root)
        for arm in urls:  # warm-up, then frozen until its turn
            wrk(f"{urls[arm]}/v1/chat/completions", lua, 2)
            procs[arm].send_signal(signal.SIGSTOP)
        names = list(urls)
        for i in range(rounds):
            result = {}
            for arm in names[i % len(names) :] + names[: i % len(names)]:
                procs[arm].send_signal(signal.SIGCONT)
                time.sleep(0.2)
                result[arm] = wrk(f"{urls[arm]}/v1/chat/completions", lua, duration)
                procs[arm].send_signal(signal.SIGSTOP)
                time.sleep(0.5)  # what the stopped arm left behind (ledger rows, spans) settles
            results.append(result)
            print(f"round {i + 1}: " + ", ".join(f"{a} {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms"
                                                 for a, r in result.items()), flush=True)  # fmt: skip
    finally:
        stop_all(procs.values())
    keys = ("rps", "p50_ms", "p99_ms")
    median = {arm: {k: round(statistics.median(r[arm][k] for r in results), 3) for k in keys} for arm in configs}
    base = next(iter(configs))
    ratio = {arm: {k: round(median[arm][k] / median[base][k], 3) for k in keys} for arm in configs if arm != base}
    errors = {arm: sum(r[arm]["errors"] for r in results) for arm in configs}
    return {"rounds": results, "median": median, "over_" + base: ratio, "errors": errors}


def checkout() -> str:
    """The commit measured: HEAD's short id, "+changes" when the gateway's code differs from it
    (results files and benchmarks do not count)."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "gateway", "pyproject.toml"],
                           cwd=root, capture_output=True, text=True).stdout.strip()  # fmt: skip
    return head.strip() + ("+changes" if dirty else "")


def write_results(path: Path, command: str, **fields) -> dict:
    """Write a benchmark's results file: the command, when, how many cores and which commit, then
    ``fields``; the whole record."""
    out = {"command": command, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
           "commit": checkout(), **fields}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(Path(__file__).resolve().parents[1])}")
    return out


def readme_block(name: str, text: str, root: Path | None = None, doc: str = "README.md", wrap: bool = True) -> None:
    """Replace the text of ``doc`` (the README unless named) between ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` with ``text`` wrapped at 100 columns (nothing happens where the markers
    are missing)."""
    readme = (root or Path(__file__).resolve().parents[1]) / doc
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = readme.read_text()
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        wrapped = "\n".join(textwrap.wrap(text, 100, break_on_hyphens=False)) if wrap else text
        readme.write_text(f"{head}{begin}\n{wrapped}\n{end}{rest.split(end, 1)[1]}")
