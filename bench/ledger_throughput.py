"""How many ledger rows SQLite and PostgreSQL take, and what the ledger adds to a request.

    python bench/ledger_throughput.py [--rows 40000] [--rounds 3] [--duration 5]   # needs wrk, taskset, PostgreSQL

1. **Rows per second** into SQLite and into PostgreSQL, from one and from three replicas (processes)
   writing at once through the gateway's own ``Ledger`` (default batch size and flush interval).
   Each request is written as a gateway writes it: a provisional row when it ends, then the same
   row again (an upsert) when its energy is final, so a request costs two row writes; the
   capacity in requests/s is half the rows/s. Three SQLite "replicas" share one file on one host
   (the only way SQLite can be shared); PostgreSQL gets a fresh database per run.
2. **The writer's cost per row** of ``executemany`` against the ledger's COPY and merge.
3. **What the ledger adds to a request**: three gateways in front of one instant simulator, with
   the ledger off, on SQLite and on PostgreSQL, everything else on. As in ``bench/ab.py``: each
   gateway on core 1, frozen (SIGSTOP) while another is measured, ``wrk`` (one thread, 16
   connections, closed loop, a short unary chat) and the simulator on core 0, rounds alternating
   the order; medians, and ratios against the ledger off.

PostgreSQL runs on the same 2-core machine as everything else, so the row rates are what one
small shared host sustains, a floor for a dedicated database server. Writes
``bench/results/ledger-throughput.json`` and the computed lines of the README and
docs/production.md (``--readme`` rewrites only those from the results file).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import compare_arms, readme_block, write_results  # noqa: E402

PG_ADMIN_URL = os.environ.get("NUDGE_BENCH_PG_URL", "postgresql://root@127.0.0.1:5432/postgres")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name one prime number."}], "max_tokens": 8}
RESULTS = ROOT / "bench" / "results" / "ledger-throughput.json"


def _row(replica: int, i: int, final: bool) -> dict:
    return {
        "request_id": f"bench-{replica}-{i}", "ts": time.time(), "key_name": f"key{i % 20}", "team": f"team{i % 4}",
        "endpoint": "chat", "requested_model": "auto", "routed_model": MODEL, "backend": "b0", "status": 200,
        "outcome": "ok", "stream": 0, "prompt_tokens": 40, "completion_tokens": 120, "reasoning_tokens": 0,
        "reasoning": 0, "energy_j": 80.0 + (i % 50), "energy_source": "measured" if final else "measured-provisional",
        "co2e_g": 0.01, "usd": None, "latency_s": 1.2, "ttft_s": 0.08, "nudges": ["large_model"],
        "route_reason": "auto:adequate", "adequacy": 0.9, "policy_version": "bench", "energy_final": int(final),
    }  # fmt: skip


def _writer(target: str, replica: int, requests: int, start_at: float, out: mp.Queue) -> None:
    from gateway.telemetry.ledger import Ledger

    ledger = Ledger(target, replica=f"bench-{replica}")
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    for i in range(requests):
        ledger.write(_row(replica, i, final=False))
        ledger.write(_row(replica, i, final=True))
        if ledger.pending > 60000:  # stay under the buffer's bound: measure the database, not drops
            while ledger.pending > 20000:
                time.sleep(0.002)
    ledger.flush()
    out.put((time.perf_counter() - t0, ledger.written, ledger.dropped))
    ledger.close()


def _pg_database() -> tuple[str, str]:
    import psycopg

    name = f"nudge_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def _pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows_per_second(store: str, replicas: int, requests: int, tmp: Path) -> dict:
    """``replicas`` processes each write ``requests`` requests (two rows each) at once."""
    drop = None
    if store == "postgres":
        target, drop = _pg_database()
    else:
        target = str(tmp / f"rows-{replicas}-{uuid.uuid4().hex[:6]}.db")
    from gateway.telemetry.ledger import Ledger

    Ledger(target).close()  # created and migrated before the clock starts
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start_at = time.time() + 3.0  # every process imported and connected by then
    procs = [ctx.Process(target=_writer, args=(target, r, requests, start_at, out)) for r in range(replicas)]
    for p in procs:
        p.start()
    done = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    if drop:
        _pg_drop(drop)
    wall = max(d[0] for d in done)
    rows = sum(d[1] for d in done)
    return {"store": store, "replicas": replicas, "rows": rows, "dropped": sum(d[2] for d in done),
            "seconds": round(wall, 3), "rows_per_s": round(rows / wall), "requests_per_s": round(rows / wall / 2)}


def request_cost(rounds: int, duration: float, tmp: Path) -> dict:
    from gateway.sim.process import start_sim

    sim = start_sim(["--model", MODEL, "--params-b", "8", "--speed", "instant", "--no-coalesce"])
    pg_url, pg_name = _pg_database()
    try:
        subprocess.run(["taskset", "-cp", "0", str(sim.proc.pid)], capture_output=True)
        backend = {"name": "sim", "url": sim.url, "meter": {"type": "dcgm", "url": f"{sim.url}/dcgm/metrics"}}
        arms = {"off": {"features": {"ledger": False}}, "sqlite": {"ledger": {"path": str(tmp / "usage.db")}},
                "postgres": {"ledger": {"url": pg_url}}}  # fmt: skip
        return compare_arms({arm: {"backends": [backend], **section} for arm, section in arms.items()}, CHAT,
                            rounds, duration, tmp)  # fmt: skip
    finally:
        sim.stop()
        _pg_drop(pg_name)


def write_docs(r: dict) -> None:
    rows = {(x["store"], x["replicas"]): x for x in r["rows"]}
    cost = r["requests"]
    pg1, pg3, sq1, sq3 = rows[("postgres", 1)], rows[("postgres", 3)], rows[("sqlite", 1)], rows[("sqlite", 3)]
    where = (f"`{r['command']}`, `bench/results/ledger-throughput.json`, {r['when'][:10]}, {r['cpus']} cores, "
             "PostgreSQL on the same machine")  # fmt: skip
    readme_block("ledger-throughput", (
        f"The ledger's cost, measured ({where}): PostgreSQL took {pg1['rows_per_s']:,} rows/s from one replica and "
        f"{pg3['rows_per_s']:,} from three writing at once (a request is two row writes: "
        f"{pg3['requests_per_s']:,} requests/s), SQLite {sq1['rows_per_s']:,} from one process. With every other "
        f"feature on, a gateway served {cost['over_off']['sqlite']['rps']:.2f}x the requests/s of the ledger turned "
        f"off with SQLite and {cost['over_off']['postgres']['rps']:.2f}x with PostgreSQL (p50 latency "
        f"{cost['over_off']['sqlite']['p50_ms']:.2f}x and {cost['over_off']['postgres']['p50_ms']:.2f}x): the row "
        "is built on the event loop and written by a thread that shares the gateway's one core here."
    ))  # fmt: skip
    im = r["insert_methods"]
    readme_block("ledger-insert", (
        f"Within psycopg, the ledger's rows go in by `COPY` into a temporary table and one merge: "
        f"{im['copy_merge']['cpu_us_per_row']} µs of the writer's CPU and {im['copy_merge']['wall_us_per_row']} µs "
        f"of wall time per row, against {im['executemany']['cpu_us_per_row']} and "
        f"{im['executemany']['wall_us_per_row']} µs for `executemany` of the same upsert ({where})."
    ))  # fmt: skip
    readme_block("ledger-sizing", (
        f"Measured by `bench/ledger_throughput.py` ({where}): one PostgreSQL took {pg1['rows_per_s']:,} rows/s from "
        f"one replica and {pg3['rows_per_s']:,} rows/s from three replicas writing at once; SQLite "
        f"{sq1['rows_per_s']:,} rows/s from one process and {sq3['rows_per_s']:,} from three sharing one file. Every "
        f"request is two row writes (its row when it ends, the same row again when its energy is final), so that "
        f"PostgreSQL keeps up with about {pg3['requests_per_s']:,} requests/s across replicas; on a dedicated "
        f"database server expect more. A gateway with the PostgreSQL ledger served "
        f"{cost['over_off']['postgres']['rps']:.2f}x the requests/s of one without a ledger. A row takes about "
        f"{r['bytes_per_row']:,} bytes on disk in PostgreSQL with its indexes: 1,000 requests/s for 90 days is "
        f"{r['bytes_per_row'] * 1000 * 86400 * 90 / 1e12:.1f} TB, which is what retention is for."
    ), doc="docs/production.md")  # fmt: skip


def insert_methods(batches: int = 40, size: int = 256) -> dict:
    """The writer's cost per row of the two ways into PostgreSQL, in this process: ``executemany``
    of the upsert, and what the ledger does (COPY into a temporary table, one merge)."""
    import psycopg

    from gateway.telemetry.ledger import Ledger, sql
    from gateway.telemetry.ledger.postgres import PostgresStore
    from gateway.telemetry.ledger.rows import to_values

    url, name = _pg_database()
    try:
        Ledger(url).close()
        out = {}
        for method in ("executemany", "copy_merge"):
            data = [[to_values(_row(0, i, True) | {"request_id": f"{method}-{b}-{i}"}, "bench") for i in range(size)]
                    for b in range(batches)]  # fmt: skip
            store = PostgresStore(url)
            with psycopg.connect(url, autocommit=True) as conn:
                upsert = sql.upsert("%s")
                cpu, wall = time.process_time(), time.perf_counter()
                for values in data:
                    if method == "executemany":
                        with conn.transaction(), conn.cursor() as cur:
                            cur.executemany(upsert, values)
                    else:
                        store.insert(values)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            store.close()
            n = batches * size
            out[method] = {"cpu_us_per_row": round(cpu / n * 1e6, 1), "wall_us_per_row": round(wall / n * 1e6, 1)}
        return out
    finally:
        _pg_drop(name)


def bytes_per_row(tmp: Path) -> int:
    """PostgreSQL's table + index bytes per row, from 20,000 rows."""
    import psycopg

    from gateway.telemetry.ledger import Ledger

    url, name = _pg_database()
    try:
        ledger = Ledger(url)
        for i in range(20000):
            ledger.write(_row(0, i, final=True))
        ledger.close()
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_total_relation_size('requests')").fetchone()[0]
        return round(size / 20000)
    finally:
        _pg_drop(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=40000, help="requests each writer process writes (two rows each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--readme", action="store_true", help="only rewrite the computed lines from the results file")
    args = ap.parse_args()
    if args.readme:
        write_docs(json.loads(RESULTS.read_text()))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    rows = []
    for store in ("sqlite", "postgres"):
        for replicas in (1, 3):
            r = rows_per_second(store, replicas, args.rows, tmp)
            print(f"{store:8s} {replicas} replica(s): {r['rows_per_s']:,} rows/s ({r['rows']:,} rows in "
                  f"{r['seconds']} s, {r['dropped']} dropped)", flush=True)  # fmt: skip
            rows.append(r)
    cost = request_cost(args.rounds, args.duration, tmp)
    for arm, r in cost["median"].items():
        print(f"ledger {arm:8s}: {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms")
    methods = insert_methods()
    for method, m in methods.items():
        print(f"{method:12s}: {m['cpu_us_per_row']} µs CPU, {m['wall_us_per_row']} µs wall per row")
    command = (f"python bench/ledger_throughput.py --rows {args.rows} --rounds {args.rounds} "
               f"--duration {args.duration:g}")
    write_docs(write_results(RESULTS, command, rows=rows, requests=cost, bytes_per_row=bytes_per_row(tmp),
                             insert_methods=methods))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
