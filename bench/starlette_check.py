"""What do Starlette's router and CORS middleware, or FastAPI, cost the request path?

    python bench/starlette_check.py [--rounds 3] [--duration 5]   # needs wrk, taskset, the bench extra

The same gateway (every feature on, the shipped default policy, one instant simulator) is served
three ways, each by uvicorn on core 1 with the load and the simulator on core 0 (``taskset``):

  exact      the handlers behind a bare exact-path dict lookup (what the gateway dispatched with
             before it moved to Starlette; kept here as the baseline)
  starlette  the gateway as shipped: ``starlette.routing.Router`` and ``CORSMiddleware``
             (``gateway/api/http.py: application``)
  fastapi    the same handlers as FastAPI routes (``app.api_route``, a ``Request`` parameter, the
             handler answering through ``send`` itself): what FastAPI's per-request machinery
             (dependency solving, its request object, exception handling) adds

and measured in interleaved rounds with ``wrk`` (closed loop, 16 connections, a short chat
request). It prints the requests per second of each, their ratio, and writes
``bench/results/starlette-check.json``. The rule of issue 13: use Starlette when it costs under 10%
of throughput; otherwise keep a hand-written dispatch and record the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, readme_block, wait_ready, wrk, wrk_script  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "starlette-check.json"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Name one prime number."}], "max_tokens": 8}


def fastapi_app(gateway):
    """The gateway's handlers as FastAPI routes, with the gateway's own lifespan."""
    from fastapi import FastAPI
    from fastapi import Request as FastAPIRequest
    from starlette.responses import Response

    from gateway.api.http import Endpoint

    class Answered(Response):  # the handler has answered through send already
        async def __call__(self, scope, receive, send) -> None:
            pass

    def route(endpoint: Endpoint):
        async def handle(request: FastAPIRequest) -> Response:
            await endpoint(request.scope, request.receive, request._send)
            return Answered()

        handle.__annotations__ = {"request": FastAPIRequest, "return": Response}  # resolved, not strings
        return handle

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for path, handlers in gateway.paths.items():
        app.add_api_route(path, route(Endpoint(handlers)), methods=list(handlers))

    async def asgi(scope, receive, send) -> None:
        await (app if scope["type"] == "http" else gateway)(scope, receive, send)

    return asgi


class ExactDispatch:
    """The baseline: the gateway's handlers behind an exact-path dict lookup (404/405 in OpenAI's
    shape), with the gateway's own lifespan."""

    def __init__(self, gateway) -> None:
        from gateway.api.http import Endpoint, not_found

        self.gateway = gateway
        self.endpoints = {path: Endpoint(handlers) for path, handlers in gateway.paths.items()}
        self.not_found = not_found

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.gateway(scope, receive, send)
            return
        endpoint = self.endpoints.get(scope["path"])
        await (endpoint or self.not_found)(scope, receive, send)


def serve(kind: str, config_path: str, port: int) -> None:
    import uvicorn

    from gateway.api.server import GatewayHttpProtocol
    from gateway.app import Gateway
    from gateway.config import load_config

    gateway = Gateway(load_config(config_path))
    app = {"starlette": lambda: gateway, "exact": lambda: ExactDispatch(gateway), "fastapi": lambda: fastapi_app(gateway)}[kind]()
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http=GatewayHttpProtocol, lifespan="on",
                access_log=False, log_level="warning")  # fmt: skip


def write_readme(r: dict) -> None:
    med, cost = r["median_rps"], r["throughput_cost"]
    decision = (
        "That is under the 10% bar the move to Starlette was made on."
        if cost < 0.10
        else "That is over the 10% bar: this run says a hand-written dispatch should come back."
    )
    text = (
        f"Routing and CORS are Starlette's (its `Router` and `CORSMiddleware`). Against a bare exact-path "
        f"lookup in front of the same handlers (`{r['command']}`, `bench/results/starlette-check.json`, "
        f"{r['when'][:10]}, {r['cpus']} cores, the full request path with every feature on) they cost "
        f"{cost:.1%} of throughput: {med['exact']:,.0f} req/s against {med['starlette']:,.0f}. {decision} "
        f"The same handlers as FastAPI routes served {med['fastapi']:,.0f} req/s, "
        f"{r['fastapi_throughput_cost']:.1%} fewer than the bare lookup."
    )
    readme_block("starlette-check", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--readme", action="store_true", help="only rewrite the README's line from the results file")
    ap.add_argument("--serve", choices=("exact", "starlette", "fastapi"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.config, args.port)
        return 0
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0

    import yaml

    from gateway.sim.process import start_sim

    tmp = Path(tempfile.mkdtemp(prefix="starlette-check-"))
    lua = wrk_script(tmp / "post.lua", BODY)
    sim = start_sim(["--model", MODEL, "--params-b", "8", "--speed", "instant"])
    procs = {}
    try:
        subprocess.run(["taskset", "-cp", "0", str(sim.proc.pid)], capture_output=True)
        config = {"backends": [{"name": "sim", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}],
                  "ledger": {"path": str(tmp / "usage.db")}}  # fmt: skip
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
        urls = {}
        for kind in ("exact", "starlette", "fastapi"):
            port = free_port()
            procs[kind] = subprocess.Popen(["taskset", "-c", "1", sys.executable, __file__, "--serve", kind, "--config",
                                            str(tmp / "gateway.yaml"), "--port", str(port)], cwd=ROOT)  # fmt: skip
            urls[kind] = f"http://127.0.0.1:{port}"
            wait_ready(urls[kind], procs[kind])
        for kind in urls:
            wrk(f"{urls[kind]}/v1/chat/completions", lua, 2)  # warm-up
        rounds = []
        for i in range(args.rounds):
            order = list(urls) if i % 2 == 0 else list(reversed(list(urls)))
            rounds.append({kind: wrk(f"{urls[kind]}/v1/chat/completions", lua, args.duration) for kind in order})
            print(f"round {i + 1}: " + ", ".join(f"{k} {v['rps']:.0f} req/s" for k, v in rounds[-1].items()), flush=True)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(30)
        sim.stop()
    med = {k: statistics.median(r[k]["rps"] for r in rounds) for k in ("exact", "starlette", "fastapi")}
    cost = 1 - med["starlette"] / med["exact"]
    fastapi_cost = 1 - med["fastapi"] / med["exact"]
    verdict = "Starlette (costs under 10%)" if cost < 0.10 else "a hand-written dispatch (Starlette costs 10% or more)"
    result = {"command": f"python bench/starlette_check.py --rounds {args.rounds} --duration {args.duration:g}",
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "rounds": rounds,
              "median_rps": med, "throughput_cost": round(cost, 4),
              "fastapi_throughput_cost": round(fastapi_cost, 4), "verdict": verdict}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    write_readme(result)
    print(f"exact {med['exact']:.0f} req/s, starlette {med['starlette']:.0f} req/s, fastapi {med['fastapi']:.0f} req/s: "
          f"Starlette costs {cost:.1%}, FastAPI {fastapi_cost:.1%} -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
