"""GET /v1/usage (filters, pagination, errors), `nudge-gateway report` and `ledger prune`, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import yaml

from gateway.api.usage import UsageEndpoint, usage_endpoint
from gateway.errors import GatewayError
from gateway.telemetry import report
from gateway.telemetry.ledger import Ledger

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def row(i: int, **kw):
    r = {
        "request_id": f"r{i:03d}", "ts": T0 + i * 60, "key_name": ["alice", "bob"][i % 2], "team": "ml",
        "endpoint": "chat", "requested_model": "auto", "routed_model": ["qwen3-1.7b", "qwen3-32b"][i % 2],
        "backend": "b", "status": 200, "outcome": "ok", "stream": 1, "prompt_tokens": 100, "completion_tokens": 50,
        "reasoning": i % 2, "energy_j": 36.0 * (1 + 9 * (i % 2)), "energy_source": "measured", "co2e_g": 0.005,
        "usd": 0.001, "nudges": [],
    }  # fmt: skip
    r.update(kw)
    return r


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    where = str(tmp_path / "usage.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    led = Ledger(where, flush_interval_s=0.01)
    for i in range(30):
        led.write(row(i))
    led.flush()
    yield led
    led.close()


def get(ledger, **params):
    return asyncio.run(usage_endpoint(ledger, {k: [str(v)] for k, v in params.items()}))


def test_usage_is_an_openai_style_list_paged_by_cursor(ledger):
    status, body = get(ledger, limit=12)
    assert status == 200 and body["object"] == "list" and body["has_more"] is True
    assert len(body["data"]) == 12 and body["first_id"] == "r029" and body["last_id"] == "r018"
    assert body["data"][0]["object"] == "usage.request" and body["data"][0]["energy_j"] == 360.0
    ids = [d["id"] for d in body["data"]]
    while body["has_more"]:
        status, body = get(ledger, limit=12, cursor=body["next_cursor"])
        ids += [d["id"] for d in body["data"]]
    assert ids == [f"r{i:03d}" for i in reversed(range(30))]
    assert body["next_cursor"] is None


def test_usage_filters_by_key_model_and_time_given_as_unix_or_iso(ledger):
    _, body = get(ledger, key="bob", model="qwen3-32b", **{"from": T0 + 600, "to": "2027-01-15T08:20:00Z"})
    assert [d["id"] for d in body["data"]] == ["r019", "r017", "r015", "r013", "r011"]
    _, body = get(ledger, key="alice", **{"from": "2027-01-15T08:20:00"})  # no zone: UTC
    assert [d["id"] for d in body["data"]] == ["r028", "r026", "r024", "r022", "r020"]


@pytest.mark.parametrize(
    "params, param",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"from": "yesterday-ish"}, "from"),
        ({"from": "2000", "to": "1000"}, "to"),
        ({"cursor": "abc"}, "cursor"),
        ({"colour": "blue"}, "colour"),
        ({"key": "a\x00b"}, "key"),  # PostgreSQL's text cannot hold it: a 400, not a 500
        ({"model": "m" * 1025}, "model"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(ledger, params, param):
    with pytest.raises(GatewayError) as err:
        get(ledger, **params)
    assert err.value.status == 400 and err.value.param == param
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_the_route_handler_answers_json_and_errors():
    class FakeRequest:
        def __init__(self, query):
            self._query, self.sent = query, None

        def query(self):
            return self._query

        async def json(self, status, payload, headers=None):
            self.sent = (status, payload)

        async def error(self, err, headers=None):
            self.sent = (err.status, err.body())

    led = Ledger(":memory:", flush_interval_s=0.01)
    led.write(row(1))
    led.flush()
    handler = UsageEndpoint(led)
    ok, bad = FakeRequest({}), FakeRequest({"limit": ["-1"]})
    asyncio.run(handler(ok))
    asyncio.run(handler(bad))
    led.close()
    assert ok.sent[0] == 200 and ok.sent[1]["data"][0]["id"] == "r001"
    assert bad.sent[0] == 400 and bad.sent[1]["error"]["param"] == "limit"


def run_report(capsys, *argv):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    code = report.run(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_prints_a_table_with_wh_per_thousand_requests(ledger, capsys):
    code, out, _ = run_report(capsys, "--ledger", ledger.path, "--by", "model")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["model", "requests", "tokens", "Wh", "Wh/1k", "req", "CO2e", "g", "$", "estimated",
                                "precision", "stars"]  # fmt: skip
    big = next(line for line in lines if line.startswith("qwen3-32b")).split()
    # 15 requests x 360 J = 1.5 Wh; per 1,000 requests 100 Wh; too few requests to be rated
    assert big[1:5] == ["15", "2,250", "1.500", "100.00"] and big[-2:] == ["bf16", "-"]
    assert lines[-1].split()[:4] == ["total", "30", "4,500", "1.650"]


def test_report_since_and_by_key(ledger, capsys):
    code, out, _ = run_report(capsys, "--ledger", ledger.path, "--by", "key", "--since", str(T0 + 1200))
    assert code == 0
    assert next(line for line in out.splitlines() if line.startswith("total")).split()[1] == "10"


def test_report_png_and_its_errors(ledger, capsys, tmp_path):
    png = tmp_path / "energy.png"
    code, out, _ = run_report(capsys, "--ledger", ledger.path, "--png", str(png))
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_report(capsys, "--ledger", str(tmp_path / "missing.db"))
    assert code == 1 and "no ledger" in err
    code, _, err = run_report(capsys, "--ledger", ledger.path, "--since", "last tuesday")
    assert code == 2 and "not unix seconds" in err


def test_report_says_clearly_when_matplotlib_is_missing(ledger, capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_report(capsys, "--ledger", ledger.path, "--png", str(tmp_path / "x.png"))
    assert code == 1 and "needs matplotlib" in err
    assert "total" in out  # the table is still printed


def test_report_and_prune_find_the_ledger_from_the_config(ledger, capsys, tmp_path, monkeypatch):
    from gateway.cli import main
    from gateway.telemetry.ledger import commands

    monkeypatch.setattr(commands, "_now", lambda: T0 + 3600.0)  # the rows' hour is now

    section = {"url": ledger.store.url} if ledger.shared else {"path": ledger.path}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "b", "url": "http://127.0.0.1:1"}], "ledger": section}))
    code, out, _ = run_report(capsys, "--config", str(config), "--by", "team")
    assert code == 0 and out.splitlines()[2].split()[:2] == ["ml", "30"]

    cutoff = str(T0 + 10 * 60)  # rows 0-9 arrived before
    assert main(["ledger", "prune", "--config", str(config), "--older-than", cutoff, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("10 row(s) older than 2027-01-15 08:10:00 UTC")
    assert main(["ledger", "prune", "--config", str(config), "--older-than", cutoff]) == 0
    assert capsys.readouterr().out.startswith("deleted 10 row(s)")
    assert sum(r["requests"] for r in ledger.totals()) == 20
    assert main(["ledger", "prune", "--config", str(config), "--older-than", "soon"]) == 2
    assert main(["ledger", "prune", "--config", str(config), "--older-than", "2027-02-01"]) == 2
    assert "in the future" in capsys.readouterr().err


def test_report_by_model_rates_models_with_stars_and_names_their_precision(tmp_path, capsys):
    led = Ledger(str(tmp_path / "usage.db"), flush_interval_s=0.01)
    joules = {"Qwen/Qwen3-32B": 360.0, "Qwen/Qwen3-32B-FP8": 250.0, "llama-8b-local": 72.0, "rare": 1.0}
    for i in range(80):
        model = list(joules)[i % 4]
        if model != "rare" or i < 8:  # 2 requests: not rated
            led.write(row(i, routed_model=model, energy_j=joules[model]))
    led.close()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "b", "url": "http://127.0.0.1:1"}],
                                      "ledger": {"path": str(tmp_path / "usage.db")},
                                      "models": {"llama-8b-local": {"precision": "awq"}}}))  # fmt: skip
    code, out, _ = run_report(capsys, "--config", str(config), "--by", "model")
    assert code == 0
    cells = {line.split()[0]: line.split()[-2:] for line in out.splitlines()[2:-2]}
    # Wh per 1,000 answers 100, 69.4 and 20: the range in five sections of 16 Wh, the lowest earning five stars
    assert cells == {"Qwen/Qwen3-32B": ["bf16", "*"], "Qwen/Qwen3-32B-FP8": ["fp8", "**"],
                     "llama-8b-local": ["awq", "*****"], "rare": ["bf16", "-"]}  # fmt: skip
