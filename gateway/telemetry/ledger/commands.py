"""The ledger's command-line side: which ledger a command means, and ``nudge-gateway ledger prune``.

    nudge-gateway ledger prune --config gateway.yaml --older-than 90d [--dry-run]

deletes the rows of requests that arrived before then (a slice at a time, so replicas writing
meanwhile wait on no long lock), and the Batch API's batches that ended and were created before
then, with their answers and output files (uploads expire on their own: ``batch.file_ttl_days``).
Run it daily (deploy/k8s has a CronJob) to keep the ledger to a retention period.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.telemetry.ledger.rows import parse_when
from gateway.telemetry.ledger.service import Ledger, LedgerUnavailable

_now = time.time  # the clock prune checks --older-than against (tests move it)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the gateway's config: its ledger section says which ledger")
    where.add_argument("--ledger", help="a SQLite ledger file or a postgresql:// URL")


def target(args: argparse.Namespace) -> str:
    """The ledger the arguments name: a postgresql:// URL or a SQLite path; ValueError if there is none."""
    if args.config:
        from gateway.config import load_config

        config = load_config(args.config)
        return config.ledger.database_url() or config.resolve(config.ledger.path)
    ledger: str = args.ledger
    if ledger.startswith(("postgresql://", "postgres://")) or ledger == ":memory:":
        return ledger
    if not Path(ledger).is_file():
        raise ValueError(f"no ledger at {ledger}")
    return ledger


def open_reachable(where: str) -> Ledger:
    """The ledger for a command: one whose database is away is an error, not a wait."""
    ledger = Ledger(where, close_timeout_s=0.0)
    if ledger.unreachable is not None:
        ledger.close()
        raise LedgerUnavailable(f"cannot reach the usage ledger {ledger.path}: {ledger.unreachable}")
    return ledger


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--older-than", required=True, help="a duration (90d, 12w) or a time (ISO 8601, unix seconds)")
    parser.add_argument("--dry-run", action="store_true", help="count the rows, delete nothing")


def prune(args: argparse.Namespace) -> int:
    try:
        where = target(args)
        before = parse_when(args.older_than, now=_now())
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if before > _now():
        print(f"error: --older-than {args.older_than} is in the future", file=sys.stderr)
        return 2
    try:
        ledger = open_reachable(where)
    except LedgerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.dry_run:
            n = sum(r["requests"] for r in ledger.totals(until=before, by="model"))
            print(f"{n:,} row(s) older than {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(before))}")
        else:
            from gateway.telemetry.ledger.jobs import JobStore

            n = ledger.prune(before)
            batches = JobStore(ledger.store).prune(before)
            print(f"deleted {n:,} row(s) older than {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(before))}"
                  f" and {batches:,} ended batch(es) with their answers")  # fmt: skip
    except LedgerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    return 0
