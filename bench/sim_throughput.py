"""How many requests per second the simulator serves in ``--speed instant`` on one CPU core.

The gateway's overhead benchmark needs a backend that is never the bottleneck. This starts a
simulator pinned to one core, loads it with ``wrk`` from another core (a short chat, non-streaming
and streaming) and prints requests per second, best and median of a few runs:

    python bench/sim_throughput.py [--seconds 8] [--connections 64] [--max-tokens 16] [--runs 3]

Needs ``wrk`` on the PATH. On a shared machine numbers vary with the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sim.process import start_sim  # noqa: E402

LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, body: dict, seconds: int, connections: int, cpu: int, workdir: Path) -> float:
    script = workdir / "request.lua"
    script.write_text(LUA.format(body=json.dumps(body)))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + "/v1/chat/completions"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"the simulator answered {errors.group(1)} errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sim-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    cases = {
        "non-streaming": {"model": "Qwen/Qwen3-8B", "messages": messages, "max_tokens": args.max_tokens},
        "streaming": {"model": "Qwen/Qwen3-8B", "messages": messages, "max_tokens": args.max_tokens, "stream": True},
    }
    with (
        start_sim(["--model", "Qwen/Qwen3-8B", "--params-b", "8", "--speed", "instant"]) as sim,
        tempfile.TemporaryDirectory() as tmp,
    ):
        os.sched_setaffinity(sim.pid, {args.sim_cpu})
        print(
            f"simulator on cpu {args.sim_cpu}, wrk on cpu {args.client_cpu}, {args.connections} connections, "
            f"max_tokens {args.max_tokens}, {args.runs}×{args.seconds}s"
        )
        for name, body in cases.items():
            rates = [
                wrk(sim.url, body, args.seconds, args.connections, args.client_cpu, Path(tmp)) for _ in range(args.runs)
            ]
            print(f"{name:14} best {max(rates):8.0f} req/s   median {statistics.median(rates):8.0f} req/s")
        truth = sim.energy()
        print(
            f"ground truth kept for {len(truth['requests'])} requests (+{truth['evicted']['count']} evicted); "
            f"total {truth['total_j'] / 3.6e3:.1f} Wh simulated"
        )


if __name__ == "__main__":
    main()
