"""A long mixed load against one gateway: does its memory or its open files grow?

    python bench/soak.py [--minutes 30] [--workers 8] [--every 60]

Starts two simulated vLLM servers (a small and a large Qwen3, 10x realistic speed) and a
gateway in front of them with what production turns on: API keys, the shipped default policy
plus a token budget per key (Redis when it answers on 127.0.0.1:6379, else in memory), energy
attribution on the simulators' DCGM pages, the SQLite ledger. Then ``--workers`` clients loop
for ``--minutes`` over a mix: unary and streamed chat on either model or ``auto``, streams the
client leaves after a few events, completions, bad requests (400), requests without a key
(401). Every five minutes the small backend is stopped and started again on the same port (a
vLLM restart: failures, failover, the health checker, a counter reset).

Every ``--every`` seconds it prints the gateway's resident memory (VmRSS), its open file
descriptors and the requests served. At the end it fits a straight line to RSS and FDs over the
run after the first ``--warmup`` minutes and prints the slopes (MB per hour, FDs per hour) with
the spread of the samples around the line, writes ``bench/results/soak.json`` and, with
``--readme``, the README's soak line. Goal: flat within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_ready  # noqa: E402
from gateway.policy.keys import hash_key  # noqa: E402
from gateway.sim.process import start_sim  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
SMALL, LARGE = ("Qwen/Qwen3-1.7B", 1.7), ("Qwen/Qwen3-32B", 32.0)
KEY = "soak-key"
ASKS = ["Name one prime number.", "Write a haiku about autumn.", "Explain TCP slow start in two sentences.",
        "Prove that the square root of 2 is irrational.", "Summarise: " + "the ledger records energy. " * 80]  # fmt: skip


def sim_args(model: tuple[str, float], port: int, seed: int) -> list[str]:
    return ["--model", model[0], "--params-b", str(model[1]), "--reasoning", "qwen3", "--speed", "10",
            "--seed", str(seed), "--port", str(port)]  # fmt: skip


def redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means: use the memory store
        return False


def proc_stats(pid: int) -> tuple[float, int]:
    rss_kb = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


async def worker(url: str, stop: float, counts: dict[str, int], rng: random.Random) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop:
            kind = rng.choices(["unary", "stream", "leave", "completion", "bad", "stranger"], [30, 30, 15, 10, 10, 5])[0]
            model = rng.choice([SMALL[0], LARGE[0], "auto"])
            body = {"model": model, "messages": [{"role": "user", "content": rng.choice(ASKS)}],
                    "max_tokens": rng.choice([8, 64, 256])}  # fmt: skip
            try:
                if kind == "unary":
                    r = await client.post("/v1/chat/completions", json=body, headers=auth)
                elif kind in ("stream", "leave"):
                    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                                             headers=auth) as r:  # fmt: skip
                        seen = 0
                        async for line in r.aiter_lines():
                            seen += line.startswith("data: {")
                            if kind == "leave" and seen >= 3:
                                break  # and hang up
                elif kind == "completion":
                    r = await client.post("/v1/completions", headers=auth,
                                          json={"model": SMALL[0], "prompt": "Once upon a time", "max_tokens": 16})  # fmt: skip
                elif kind == "bad":
                    r = await client.post("/v1/chat/completions", json={"model": model, "messages": "nope"}, headers=auth)
                else:
                    r = await client.post("/v1/chat/completions", json=body)
                counts[f"{kind}:{r.status_code}"] = counts.get(f"{kind}:{r.status_code}", 0) + 1
            except httpx.HTTPError as exc:
                counts[f"{kind}:{type(exc).__name__}"] = counts.get(f"{kind}:{type(exc).__name__}", 0) + 1


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope (per unit of x) and the residuals' standard deviation."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    resid = [y - (my + b * (x - mx)) for x, y in zip(xs, ys)]
    return b, statistics.pstdev(resid)


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    ports = {"small": free_port(), "large": free_port()}
    sims = {"small": start_sim(sim_args(SMALL, ports["small"], 1)), "large": start_sim(sim_args(LARGE, ports["large"], 2))}
    store = {"store": "redis", "prefix": f"soak-{os.getpid()}:"} if redis_up() else {"store": "memory"}
    policy = yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    policy.setdefault("default", {})["budgets"] = [
        {"scope": "key", "period": "day", "unit": "tokens", "limit": 10**12, "on_exceed": "refuse"}]  # fmt: skip
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    config = {
        "server": {"health_interval_s": 1.0, "load_interval_s": 1.0},
        "backends": [{"name": k, "url": f"http://127.0.0.1:{p}", "meter": {"type": "dcgm", "url": f"http://127.0.0.1:{p}/dcgm/metrics"}}
                     for k, p in ports.items()],  # fmt: skip
        "models": {SMALL[0]: {"params_b": SMALL[1]}, LARGE[0]: {"params_b": LARGE[1]}},
        "keys": {"required": True, "keys": [{"name": "soak", "team": "soak", "hash": hash_key(KEY)}]},
        "policy": {"path": str(tmp / "policy.yaml")},
        "budgets": store,
        "ledger": {"path": str(tmp / "usage.db")},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "gateway.log", "wb")
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp / "gateway.yaml"),
                           "--port", str(port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    samples: list[dict] = []
    counts: dict[str, int] = {}
    restarts = 0
    try:
        wait_ready(url, gw, tmp / "gateway.log")
        started = time.monotonic()
        stop = started + args.minutes * 60

        async def main() -> None:
            nonlocal restarts
            rng = random.Random(1)
            tasks = [asyncio.create_task(worker(url, stop, counts, random.Random(rng.random()))) for _ in range(args.workers)]
            next_sample, next_restart = started, started + 300
            while time.monotonic() < stop:
                now = time.monotonic()
                if now >= next_sample:
                    rss, fds = proc_stats(gw.pid)
                    served = sum(counts.values())
                    samples.append({"t_min": round((now - started) / 60, 2), "rss_mb": round(rss, 1), "fds": fds,
                                    "requests": served})  # fmt: skip
                    print(f"{samples[-1]['t_min']:6.1f} min  RSS {rss:7.1f} MB  fds {fds:4d}  requests {served}", flush=True)
                    next_sample += args.every
                if now >= next_restart:  # a vLLM restart: down for a few seconds, back on the same port
                    await asyncio.to_thread(sims["small"].stop)
                    await asyncio.sleep(3)
                    sims["small"] = await asyncio.to_thread(start_sim, sim_args(SMALL, ports["small"], 3 + restarts))
                    restarts += 1
                    next_restart += 300
                await asyncio.sleep(1)
            await asyncio.gather(*tasks)

        asyncio.run(main())
        rss, fds = proc_stats(gw.pid)
        samples.append({"t_min": round((time.monotonic() - started) / 60, 2), "rss_mb": round(rss, 1), "fds": fds,
                        "requests": sum(counts.values())})  # fmt: skip
    finally:
        gw.terminate()
        gw.wait(60)
        for sim in sims.values():
            sim.stop()
    after = [s for s in samples if s["t_min"] >= args.warmup]
    xs = [s["t_min"] / 60 for s in after]  # hours
    rss_slope, rss_noise = slope(xs, [s["rss_mb"] for s in after])
    fd_slope, fd_noise = slope(xs, [float(s["fds"]) for s in after])
    errors = {k: v for k, v in counts.items() if not k.endswith((":200", ":400", ":401")) and not k.startswith("leave:")}
    return {
        "command": f"python bench/soak.py --minutes {args.minutes:g} --workers {args.workers} --every {args.every:g}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_store": store["store"], "backend_restarts": restarts,
        "requests": sum(counts.values()), "outcomes": counts, "unexpected": errors, "warmup_min": args.warmup,
        "rss_mb_per_hour": round(rss_slope, 2), "rss_noise_mb": round(rss_noise, 2),
        "fds_per_hour": round(fd_slope, 2), "fds_noise": round(fd_noise, 2),
        "rss_mb_first_last": [after[0]["rss_mb"], after[-1]["rss_mb"]] if after else None,
        "samples": samples,
    }  # fmt: skip


README_BEGIN, README_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def readme_line(r: dict) -> str:
    span = r["samples"][-1]["t_min"] if r["samples"] else 0
    return (
        f"Soak (`{r['command']}`, `bench/results/soak.json`, {r['when'][:10]}): {r['requests']:,} requests over "
        f"{span:.0f} minutes (streams, streams left midway, bad and keyless requests, a token budget in "
        f"{r['budget_store']}, {r['backend_restarts']} backend restarts). After the first {r['warmup_min']:g} minutes "
        f"the gateway's RSS moved {r['rss_mb_per_hour']:+.1f} MB per hour (samples scatter {r['rss_noise_mb']:.1f} MB "
        f"around that line; {r['rss_mb_first_last'][0]:.0f} -> {r['rss_mb_first_last'][1]:.0f} MB) and its open "
        f"files {r['fds_per_hour']:+.1f} per hour (scatter {r['fds_noise']:.1f}). "
        f"{sum(v for k, v in r['outcomes'].items() if k.split(':')[1].startswith('5')):,} answers were 5xx, "
        f"{sum(v for k, v in r['unexpected'].items() if not k.split(':')[1].isdigit()):,} connections failed."
    )


def write_readme(r: dict) -> None:
    import textwrap

    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        body = "\n".join(textwrap.wrap(readme_line(r), 100))
        readme.write_text(f"{head}{README_BEGIN}\n{body}\n{README_END}{rest.split(README_END, 1)[1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes left out of the slope (caches filling)")
    ap.add_argument("--readme", action="store_true", help="also write the README's soak line")
    ap.add_argument("--from-results", action="store_true", help="only rewrite the README line from the results file")
    args = ap.parse_args()
    if args.from_results:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    result = run(args)
    print(f"\nRSS {result['rss_mb_per_hour']:+.2f} MB/h (scatter {result['rss_noise_mb']:.2f} MB), "
          f"fds {result['fds_per_hour']:+.2f}/h (scatter {result['fds_noise']:.2f}); unexpected outcomes: "
          f"{result['unexpected'] or 'none'}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    if args.readme:
        write_readme(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
