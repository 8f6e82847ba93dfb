"""``nudge-gateway report``: energy and usage from the ledger, as a table and optionally a chart.

    nudge-gateway report (--config gateway.yaml | --ledger nudge-usage.db | --ledger postgresql://...)
                         [--since 24h] [--until ...] [--by model|key|team|backend|replica] [--png report.png]

The table has one line per group: requests, tokens, energy (Wh), Wh per 1,000 requests (the AI
Energy Score's unit), CO2e and cost, and the share of requests whose energy is estimated rather
than measured. By model, also each model's weight precision (the config's, else its name's) and
its energy stars among the models of the period (``telemetry/rating.py``). ``--png`` draws energy
per model and per key (matplotlib, imported only then).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.precision import precision_of
from gateway.telemetry.ledger import GROUPS, LedgerUnavailable, parse_when
from gateway.telemetry.ledger.commands import add_target_arguments, open_reachable, target
from gateway.telemetry.rating import MIN_ANSWERS, stars


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--since", help="from: unix seconds, ISO 8601, or a duration ago (30m, 24h, 7d)")
    parser.add_argument("--until", help="until (exclusive), same forms as --since")
    parser.add_argument("--by", choices=sorted(GROUPS), default="model", help="group the table by (default model)")
    parser.add_argument("--png", help="also draw energy per model and per key into this PNG file (needs matplotlib)")


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[dict[str, Any]], by: str, precisions: dict[str, str] | None = None) -> str:
    """The terminal table, with a total line; by model, with precision and stars (``precisions``:
    the config's word for a model, where it has one)."""
    header = [by, "requests", "tokens", "Wh", "Wh/1k req", "CO2e g", "$", "estimated"]
    per_model = by == "model"
    if per_model:
        header += ["precision", "stars"]
        rated = {r["model"]: r["energy_j"] / 3.6 / r["requests"] for r in rows
                 if r["model"] is not None and r["requests"] >= MIN_ANSWERS}  # fmt: skip
    lines = []
    total: dict[str, float] = {"requests": 0, "tokens": 0, "energy_j": 0.0, "co2e_g": 0.0, "estimated": 0}
    usd: float | None = None
    for r in rows:
        tokens = (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
        wh = r["energy_j"] / 3600.0
        lines.append([
            str(r[by] if r[by] is not None else "-"),
            f"{r['requests']:,}",
            f"{tokens:,}",
            _fmt(wh, 3),
            _fmt(wh * 1000.0 / r["requests"] if r["requests"] else None, 2),
            _fmt(r["co2e_g"], 2),
            _fmt(r["usd"], 4),
            f"{(r['estimated'] or 0) / r['requests']:.0%}" if r["requests"] else "-",
        ])  # fmt: skip
        if per_model:
            name = r["model"]
            star = stars(rated[name], list(rated.values())) if name in rated else None
            lines[-1] += [precision_of(name, (precisions or {}).get(name)) if name else "-",
                          "*" * star if star else "-"]  # fmt: skip
        total["requests"] += r["requests"]
        total["tokens"] += tokens
        total["energy_j"] += r["energy_j"]
        total["co2e_g"] += r["co2e_g"]
        total["estimated"] += r["estimated"] or 0
        if r["usd"] is not None:
            usd = (usd or 0.0) + r["usd"]
    n = total["requests"]
    wh = total["energy_j"] / 3600.0
    footer = [
        "total", f"{n:,}", f"{total['tokens']:,}", _fmt(wh, 3), _fmt(wh * 1000.0 / n if n else None, 2),
        _fmt(total["co2e_g"], 2), _fmt(usd, 4), f"{total['estimated'] / n:.0%}" if n else "-",
    ]  # fmt: skip
    if per_model:
        footer += ["", ""]
    widths = [max(len(row[i]) for row in [header, *lines, footer]) for i in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *map(render, lines), rule, render(footer)])


def _configured_precisions(args: argparse.Namespace) -> dict[str, str]:
    if not args.config or args.by != "model":
        return {}
    from gateway.config import load_config

    return {name: m.precision for name, m in load_config(args.config).models.items() if m.precision}


def chart(by_model: list[dict[str, Any]], by_key: list[dict[str, Any]], path: str) -> None:
    """Two bar charts, energy per model and per key (the 15 largest each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, rows, group, title in ((axes[0], by_model, "model", "per model"), (axes[1], by_key, "key", "per key")):
        rows = rows[:15][::-1]
        labels = [str(r[group] if r[group] is not None else "anonymous" if group == "key" else "-") for r in rows]
        ax.barh(labels, [r["energy_j"] / 3600.0 for r in rows], color="#2a9d8f")
        ax.set_title(f"GPU energy {title}")
        ax.set_xlabel("Wh")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        where = target(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        ledger = open_reachable(where)
        try:
            rows = ledger.totals(since=since, until=until, by=args.by)
            by_model = ledger.totals(since=since, until=until, by="model") if args.png else []
            by_key = ledger.totals(since=since, until=until, by="key") if args.png else []
        finally:
            ledger.close()
    except LedgerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print("no requests in the ledger for this period")
    else:
        print(table(rows, args.by, _configured_precisions(args)))
        if any(r["estimated"] for r in rows):
            print("\n'estimated': share of requests whose energy is estimated from tokens (no meter), not measured.")
    if args.png:
        try:
            chart(by_model, by_key, args.png)
        except ImportError:
            print("error: --png needs matplotlib, which is not installed (pip install matplotlib)", file=sys.stderr)
            return 1
        print(f"chart written to {args.png}")
    return 0
