"""A bounded fuzz run: requests generated from OpenAI's own schema of the endpoints we serve.

schemathesis draws valid requests (positive) and requests that break the schema on purpose
(negative) for ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and
``GET /v1/models`` (``fuzz/openai-subset.json``, cut from openai-openapi by
``fuzz/build_schema.py``), and sends them to a gateway with keys, the default policy and a
token budget, in front of instant simulators. Whatever arrives, the gateway must answer with
its own status below 500 and, for an error, OpenAI's error shape: a 5xx here is a bug. The
number of examples is fixed and the database off, so a run is bounded (well under a minute)
and the same each time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from gateway.policy.keys import hash_key  # noqa: E402
from gateway.sim.process import start_sim  # noqa: E402
from tests.support import LARGE, SMALL, backend_entry, base_config  # noqa: E402
from tests.e2e.test_nudges import policy_file  # noqa: E402
from tests.support import GatewayProcess, write_config  # noqa: E402

SCHEMA = Path(__file__).resolve().parent / "fuzz" / "openai-subset.json"
AUTH = {"authorization": "Bearer fuzz-key"}
EXAMPLES = 60  # per operation and mode: up to (5 + 4 operations) x 60 = 540 requests (fewer when few differ)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with start_sim(["--model", SMALL, "--params-b", "1.7", "--reasoning", "qwen3", "--speed", "instant"]) as small, \
            start_sim(["--model", LARGE, "--params-b", "32", "--reasoning", "qwen3", "--speed", "instant"]) as large:
        policy = {"budgets": [{"scope": "key", "period": "day", "unit": "tokens", "limit": 10**12, "on_exceed": "refuse"}]}
        config = base_config(tmp, [backend_entry("small", small), backend_entry("large", large)],
                             policy={"path": str(policy_file(tmp, policy))},
                             keys={"required": True, "keys": [{"name": "fuzz", "team": "t", "hash": hash_key("fuzz-key")}]})
        with GatewayProcess(write_config(tmp, config)) as gw:
            yield gw


def operations():
    schema = schemathesis.openapi.from_path(SCHEMA)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_drawn_from_the_openai_schema_gets_a_5xx(gateway, mode):
    from schemathesis import GenerationMode

    failures: list[str] = []
    statuses: dict[int, int] = {}
    for op in operations():
        if mode == "negative" and op.method.upper() == "GET":
            continue  # GET /v1/models takes nothing that could be made invalid

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        def send(case):
            if isinstance(case.body, dict) and case.body.get("model") not in (None, SMALL, LARGE, "auto"):
                case.body["model"] = SMALL  # a random model name is a 404 every time: test the rest instead
            response = case.call(base_url=gateway.url, headers=AUTH, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{op.label}: {response.status_code} {response.text[:300]} for {str(case.body)[:300]}")
            elif response.status_code >= 400:
                error = response.json().get("error")
                assert isinstance(error, dict) and isinstance(error.get("message"), str), response.text[:300]

        send()
    print(f"{mode}: {sorted(statuses.items())}")
    assert sum(statuses.values()) >= 100  # the run really sent what it drew
    assert not failures, "\n".join(failures[:10])
