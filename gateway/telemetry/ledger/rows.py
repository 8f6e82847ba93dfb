"""A ledger row: its columns, how a finished request becomes one, and how one is read back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.context import RequestContext

COLUMNS = (
    "request_id", "ts", "key_name", "team", "endpoint", "requested_model", "routed_model", "backend",
    "status", "outcome", "stream", "prompt_tokens", "completion_tokens", "reasoning_tokens", "reasoning",
    "energy_j", "energy_source", "co2e_g", "usd", "latency_s", "ttft_s", "nudges", "route_reason",
    "adequacy", "policy_version", "energy_final", "replica", "service_tier",
)  # fmt: skip

CLIENT_TEXT_MAX = 256  # characters kept of a string the client chose (the model it asked for)
GROUPS = {
    "model": "routed_model", "key": "key_name", "team": "team", "backend": "backend", "replica": "replica",
    "tier": "service_tier",
}  # fmt: skip
_TIERS = frozenset({"default", "flex", "batch"})

_NUDGES = COLUMNS.index("nudges")
_TS = COLUMNS.index("ts")
_FINAL = COLUMNS.index("energy_final")
_REPLICA = COLUMNS.index("replica")
# Columns that may hold a client's words (the model it named, the routing reason quoting it):
# PostgreSQL's text cannot hold NUL, so it is replaced there.
_CLIENT_TEXT = (COLUMNS.index("requested_model"), COLUMNS.index("route_reason"))


def row_from_context(ctx: RequestContext, final: bool = True) -> dict[str, Any]:
    """The row of a request. ``final``: its energy will not change (False: a provisional row,
    written when the request ends, which the final one replaces)."""
    usage = ctx.usage if isinstance(ctx.usage, dict) else {}
    details = usage.get("completion_tokens_details") or {}
    reasoning_tokens = details.get("reasoning_tokens") if isinstance(details, dict) else None
    if not isinstance(reasoning_tokens, int):
        reasoning_tokens = ctx.reasoning_tokens
    energy = ctx.energy
    return {
        "request_id": ctx.request_id,
        "ts": ctx.received_wall,
        # the key's name; an unnamed key by its hash prefix, as metrics and social proof know it
        "key_name": ctx.key_name or (ctx.api_key_hash[:19] if ctx.api_key_hash else None),
        "team": ctx.team,
        "endpoint": ctx.api or ctx.endpoint,
        "requested_model": ctx.requested_model[:CLIENT_TEXT_MAX] or None,  # the client's words: bounded
        "routed_model": ctx.model or None,
        "backend": ctx.backend,
        "status": ctx.status,
        "outcome": ctx.outcome,
        "stream": int(ctx.stream),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": reasoning_tokens,
        "reasoning": int(bool(ctx.reasoning or reasoning_tokens)),
        "energy_j": energy.joules if energy is not None else None,
        "energy_source": energy.source if energy is not None else None,
        "co2e_g": energy.co2e_g if energy is not None else None,
        "usd": energy.usd if energy is not None else None,
        "latency_s": ctx.latency_s,
        "ttft_s": ctx.first_byte - ctx.received if ctx.first_byte is not None else None,
        "nudges": [n.id for n in ctx.nudges],
        "route_reason": ctx.route_reason or None,
        "adequacy": ctx.adequacy,
        "policy_version": ctx.policy_version,
        "energy_final": int(final),
        # the tier it was served on (or asked for, if refused before the policy placed it); OpenAI's
        # other tiers are served as default
        "service_tier": ctx.service_tier if ctx.service_tier in _TIERS else "default",
    }


def to_values(row: dict[str, Any], replica: str) -> list[Any]:
    """One row's values in column order, as the database stores them."""
    get = row.get
    values = [get(c) for c in COLUMNS]
    values[_NUDGES] = orjson.dumps(values[_NUDGES] or []).decode()
    if values[_TS] is None:
        values[_TS] = time.time()
    if values[_FINAL] is None:
        values[_FINAL] = 1  # a row is final unless it says otherwise
    if values[_REPLICA] is None:
        values[_REPLICA] = replica
    for i in _CLIENT_TEXT:
        text = values[i]
        if isinstance(text, str) and "\x00" in text:
            values[i] = text.replace("\x00", "\ufffd")
    return values


def from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as the API shows it."""
    out = {c: record[c] for c in COLUMNS}
    out["nudges"] = orjson.loads(out["nudges"]) if out["nudges"] else []
    out["stream"] = bool(out["stream"])
    out["reasoning"] = bool(out["reasoning"])
    return out


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(value: str, now: float | None = None) -> float:
    """Unix seconds, ISO 8601 (UTC unless a zone is given) or a duration ago ('30m', '24h', '7d')."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if len(text) > 1 and text[-1].lower() in _DURATION and text[:-1].replace(".", "", 1).isdigit():
        return (time.time() if now is None else now) - float(text[:-1]) * _DURATION[text[-1].lower()]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not unix seconds, an ISO 8601 time or a duration like 24h") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
