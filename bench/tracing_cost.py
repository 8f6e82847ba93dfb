"""What OpenTelemetry tracing costs a request: the gateway with tracing off, and on with every
request sampled and with one in ten, side by side in one run.

    python bench/tracing_cost.py [--rounds 3] [--duration 5]        # needs wrk and taskset

Three gateways (every other feature on, the shipped default settings) in front of one instant
simulator, measured in turns as in ``bench/ab.py`` (``bench/common.compare_arms``): each on core 1,
frozen while another is measured, ``wrk`` and the simulator on core 0. Traced gateways export over
OTLP/HTTP to a small receiver on core 0 that answers every export with 200 (what a collector does
before its own work). Writes ``bench/results/tracing-cost.json`` and the computed line of
docs/tracing.md (``--readme`` rewrites only that line from the results file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import compare_arms, readme_block, write_results  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name one prime number."}], "max_tokens": 8}
RESULTS = ROOT / "bench" / "results" / "tracing-cost.json"


class _Collector(BaseHTTPRequestHandler):
    exports = 0
    spans_bytes = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Collector.exports += 1
        _Collector.spans_bytes += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def write_docs(r: dict) -> None:
    m, ratio = r["median"], r["over_off"]
    # one core saturated: the time per request is what each request costs that core
    extra = {arm: (1 / m[arm]["rps"] - 1 / m["off"]["rps"]) * 1e6 for arm in ("sampled", "tenth")}
    readme_block("tracing-cost", (
        f"Measured (`{r['command']}`, `bench/results/tracing-cost.json`, {r['when'][:10]}, {r['cpus']} cores, "
        "one gateway process pinned to one core and saturated, a short unary chat over 16 connections, exports to a "
        f"local receiver): with every request sampled the gateway served {ratio['sampled']['rps']:.2f}x the "
        f"requests/s of tracing off ({m['sampled']['rps']:,.0f} against {m['off']['rps']:,.0f}: about "
        f"{extra['sampled']:,.0f} µs of CPU more per request, the spans on the event loop and their protobuf "
        f"export on the processor's thread), with `sample_ratio: 0.1` {ratio['tenth']['rps']:.2f}x "
        f"({m['tenth']['rps']:,.0f}, about {extra['tenth']:,.0f} µs more per request). Tracing every request is for "
        "modest request rates; near the gateway's limit, sample."
    ), doc="docs/tracing.md")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--readme", action="store_true", help="only rewrite the computed line from the results file")
    args = ap.parse_args()
    if args.readme:
        write_docs(json.loads(RESULTS.read_text()))
        return 0
    from gateway.sim.process import start_sim

    tmp = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    os.sched_setaffinity(0, {0})  # this process (the collector) with the load, off the gateways' core
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    sim = start_sim(["--model", MODEL, "--params-b", "8", "--speed", "instant", "--no-coalesce"])
    try:
        subprocess.run(["taskset", "-cp", "0", str(sim.proc.pid)], capture_output=True)
        backend = {"name": "sim", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}
        arms = {
            "off": {},
            "sampled": {"tracing": {"otlp_endpoint": endpoint, "sample_ratio": 1.0}},
            "tenth": {"tracing": {"otlp_endpoint": endpoint, "sample_ratio": 0.1}},
        }
        cost = compare_arms({arm: {"backends": [backend], "ledger": {"path": str(tmp / f"{arm}.db")}, **section}
                             for arm, section in arms.items()}, CHAT, args.rounds, args.duration, tmp)  # fmt: skip
    finally:
        sim.stop()
        collector.shutdown()
    for arm, r in cost["median"].items():
        print(f"tracing {arm:8s}: {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")
    print(f"the collector received {_Collector.exports} exports, {_Collector.spans_bytes:,} bytes")
    command = f"python bench/tracing_cost.py --rounds {args.rounds} --duration {args.duration:g}"
    write_docs(write_results(RESULTS, command, exports=_Collector.exports, export_bytes=_Collector.spans_bytes, **cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
