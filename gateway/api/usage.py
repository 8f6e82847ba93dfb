"""``GET /v1/usage``: the usage ledger, filtered and paginated, as an OpenAI-style list.

Query parameters (all optional):

``key``, ``team``, ``model``
    exact match; ``model`` matches the routed or the requested model.
``from``, ``to``
    time range on when the request arrived: unix seconds (``1732800000``), ISO 8601
    (``2026-11-28``, ``2026-11-28T18:00:00Z``; no zone means UTC) or a duration ago (``24h``,
    ``7d``); ``from`` is inclusive, ``to`` exclusive.
``limit``
    1-1000, default 100.
``cursor`` (or ``after``)
    the ``next_cursor`` of the previous page.

The answer::

    {"object": "list", "data": [{"object": "usage.request", "id": ..., ...}, ...],
     "first_id": ..., "last_id": ..., "has_more": bool, "next_cursor": str | null}

Rows come newest first. A bad parameter is a 400 in OpenAI's error shape (``GatewayError``); a
ledger database that is away, a 503 with ``retry-after``.
Who may see whose usage is for the caller to decide (e.g. force ``key`` to the caller's key).
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import GatewayError, bad_request
from gateway.policy.keys import KeyRing
from gateway.telemetry.ledger import Ledger, LedgerUnavailable, parse_when

MAX_LIMIT = 1000
_KNOWN = {"key", "team", "model", "from", "to", "limit", "cursor", "after"}


def parse_time(value: str, param: str) -> float:
    try:
        return parse_when(value)
    except ValueError as exc:
        raise bad_request(f"Invalid '{param}': {exc}.", param=param, code="invalid_time") from None


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(f"'{name}' was given {len(values)} times; give it once.", param=name)
    return values[0]


def _params(query: dict[str, list[str]]) -> dict[str, Any]:
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise bad_request(f"Unknown query parameter '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    params: dict[str, Any] = {name: _one(query, name) for name in ("key", "team", "model")}
    for name in ("key", "team", "model"):
        value = params[name]
        if value is not None and (len(value) > 1024 or not value.isprintable()):
            raise bad_request(f"Invalid '{name}': control characters or over 1,024 characters.", param=name)
    since, until = _one(query, "from"), _one(query, "to")
    params["since"] = parse_time(since, "from") if since is not None else None
    params["until"] = parse_time(until, "to") if until is not None else None
    if params["since"] is not None and params["until"] is not None and params["until"] < params["since"]:
        raise bad_request("'to' is before 'from'.", param="to")

    limit = _one(query, "limit")
    if limit is None:
        params["limit"] = 100
    elif not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        raise bad_request(f"Invalid 'limit': {limit!r}; give an integer from 1 to {MAX_LIMIT}.", param="limit")
    else:
        params["limit"] = int(limit)

    cursor = _one(query, "cursor") or _one(query, "after")
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):  # a row id: SQLite's 64-bit integer
        raise bad_request(f"Invalid 'cursor': {cursor!r}; use the next_cursor of a previous page.", param="cursor")
    params["cursor"] = cursor
    return params


async def usage_endpoint(ledger: Ledger, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
    """Serve ``GET /v1/usage``; raises ``GatewayError`` (400) for a bad parameter."""
    params = _params(query)
    try:
        rows, next_cursor = await asyncio.to_thread(ledger.query, **params)
    except LedgerUnavailable:
        raise GatewayError(503, "The usage ledger is unreachable; try again shortly.", code="ledger_unavailable",
                           headers={"retry-after": "5"}) from None  # fmt: skip
    data = [{"object": "usage.request", "id": row["request_id"], **row} for row in rows]
    return 200, {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": next_cursor is not None,
        "next_cursor": next_cursor,
    }


class UsageEndpoint:
    """The route handler for ``GET /v1/usage``.

    Who sees what: with no API keys configured (a private deployment) the ledger is open.
    Once keys exist, a key is needed; a key sees its own team's rows, an ``admin`` key
    every team's.
    """

    def __init__(self, ledger: Ledger, keys: KeyRing | None = None) -> None:
        self.ledger = ledger
        self.keys = keys

    async def __call__(self, request) -> None:
        try:
            query = request.query()
            if self.keys is not None and len(self.keys):
                who = self.keys.authenticate(request.headers)
                if who.key_hash is None:
                    raise GatewayError(401, "Reading usage needs an API key.", code="invalid_api_key",
                                       type="invalid_request_error")
                if not who.admin:
                    asked = query.get("team")
                    if asked and asked != [who.team]:
                        raise GatewayError(403, f"This key may read the usage of team {who.team!r} only.",
                                           param="team", code="permission_denied")
                    query = {**query, "team": [who.team]}
            status, body = await usage_endpoint(self.ledger, query)
        except GatewayError as err:
            await request.error(err)
            return
        await request.json(status, body)
