"""The usage ledger through the gateway: every request lands, and keys see their own team's rows."""

from __future__ import annotations

import httpx

from gateway.policy.keys import hash_key
from tests.support import MEDIUM, backend_entry, base_config
from tests.support import GatewayProcess, wait_until, write_config

KEYS = {"alice": ("alice-secret-key", "nlp", False), "bob": ("bob-secret-key", "vision", False),
        "root": ("root-secret-key", "ops", True)}


def test_usage_rows_and_who_may_read_them(sims, tmp_path):
    keys = [{"name": name, "team": team, "admin": admin, "hash": hash_key(key)}
            for name, (key, team, admin) in KEYS.items()]
    config = base_config(tmp_path, [backend_entry("m", sims[MEDIUM])], keys={"required": True, "keys": keys})
    with GatewayProcess(write_config(tmp_path, config)) as gw:
        def auth(name):
            return {"authorization": f"Bearer {KEYS[name][0]}"}

        chat = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
        for name in ("alice", "alice", "bob"):
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat, headers=auth(name), timeout=30)
            assert r.status_code == 200, r.text
        refused = httpx.post(f"{gw.url}/v1/chat/completions", json=chat, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

        def usage(name=None, **params):
            return httpx.get(f"{gw.url}/v1/usage", params=params, headers=auth(name) if name else {}, timeout=10)

        # rows land as the answers end, and again once the energy is final (a moment later)
        wait_until(lambda: len(usage("root").json()["data"]) >= 3
                   and all(r["energy_final"] for r in usage("root").json()["data"]), 15, what="final ledger rows")
        rows = usage("root").json()["data"]
        mine = [r for r in rows if r["key_name"] == "alice"]
        assert len(mine) == 2
        row = mine[0]
        assert row["requested_model"] == "auto" and row["routed_model"] == MEDIUM
        assert row["energy_j"] > 0 and row["prompt_tokens"] > 0 and row["status"] == 200
        assert len(rows) == 3  # a request refused before admission (no key) leaves no row, only a counter

        alice = usage("alice").json()["data"]
        assert {r["team"] for r in alice} == {"nlp"} and len(alice) == 2
        assert usage("alice", team="vision").status_code == 403
        assert usage().status_code == 401
        assert {r["team"] for r in usage("root").json()["data"]} >= {"nlp", "vision"}
        assert usage("root", limit="1").json()["has_more"] is True
