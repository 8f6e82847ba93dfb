"""Every error path answers in OpenAI's shape with the right status, and nothing is half-done."""

from __future__ import annotations

import httpx

from gateway.sim.process import start_sim
from tests.support import MEDIUM, backend_entry, base_config, twin_backends, sim_counter
from tests.support import GatewayProcess, write_config

CHAT = {"model": MEDIUM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def assert_openai_error(r: httpx.Response, status: int, code=None, param=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def post(gateway, payload=None, path="/v1/chat/completions", **kw):
    return httpx.post(f"{gateway.url}{path}", json=payload, timeout=30, **kw)


def test_invalid_json_is_400(gateway):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert_openai_error(r, 400)


def test_missing_messages_is_400(gateway):
    assert_openai_error(post(gateway, {"model": MEDIUM}), 400, param="messages")
    assert_openai_error(post(gateway, {"model": MEDIUM}, path="/v1/completions"), 400, param="prompt")


def test_stream_options_without_stream_is_400(gateway):
    err = assert_openai_error(post(gateway, {**CHAT, "stream_options": {"include_usage": True}}), 400)
    assert "stream" in err["message"]


def test_unknown_model_is_404_model_not_found(gateway, sims):
    before = sim_counter(sims[MEDIUM], "vllm:request_success_total")
    err = assert_openai_error(post(gateway, {**CHAT, "model": "no-such-model"}), 404, code="model_not_found")
    assert "no-such-model" in err["message"]
    assert sim_counter(sims[MEDIUM], "vllm:request_success_total") == before  # nothing went upstream


def test_body_over_limit_is_413(sims, tmp_path):
    config = base_config(tmp_path, [backend_entry("m", sims[MEDIUM])], server={"max_body_bytes": 2000})
    with GatewayProcess(write_config(tmp_path, config)) as gw:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        assert_openai_error(post(gw, big), 413)
        assert post(gw, CHAT).status_code == 200  # and the gateway is fine afterwards


def test_context_length_is_400(gateway):
    too_long = {**CHAT, "messages": [{"role": "user", "content": "word " * 200_000}]}
    assert_openai_error(post(gateway, too_long), 400, code="context_length_exceeded")


def test_unknown_path_and_method(gateway):
    assert_openai_error(httpx.get(f"{gateway.url}/v1/nope"), 404)
    assert_openai_error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_backend_failing_before_first_byte_is_retried_on_another(tmp_path):
    with twin_backends(tmp_path) as (gw, a, b):
        # a answers its next 3 requests with a 500 before any byte
        httpx.post(f"{a.url}/debug/fault", json={"mode": "error_before_first_byte", "count": 3})
        for stream in (False, True, False):
            r = post(gw, {**CHAT, "stream": stream})
            assert r.status_code == 200, r.text
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'gateway_upstream_attempts_total{backend="a",result="http_500"} 3.0' in metrics
        assert 'gateway_upstream_attempts_total{backend="b",result="ok"} 3.0' in metrics


def test_every_backend_down_is_503_with_retry_after(tmp_path):
    sim = start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"])
    config = base_config(tmp_path, [backend_entry("a", sim)], server={"health_interval_s": 30})
    with GatewayProcess(write_config(tmp_path, config)) as gw:
        sim.kill()
        r = post(gw, CHAT)
        assert_openai_error(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_old_vllm_flat_error_is_normalised(tmp_path):
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant", "--vllm-version", "0.9.2"]) as sim:
        config = base_config(tmp_path, [backend_entry("old", sim)])
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            # a parameter vLLM itself rejects: the gateway passes the 400 on, in OpenAI's shape
            err = assert_openai_error(post(gw, {**CHAT, "temperature": -3}), 400)
            assert err["type"] == "invalid_request_error"


def test_mid_stream_failure_ends_with_error_event_and_done(tmp_path):
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as sim:
        config = base_config(tmp_path, [backend_entry("a", sim)])
        with GatewayProcess(write_config(tmp_path, config)) as gw:
            httpx.post(f"{sim.url}/debug/fault", json={"mode": "die_midstream", "after_chunks": 3, "count": 1})
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json={**CHAT, "max_tokens": 50, "stream": True},
                              timeout=30) as r:
                assert r.status_code == 200
                events = [line for line in r.iter_lines() if line]
            assert events[-1] == "data: [DONE]"
            assert events[-2].startswith('data: {"error"')
            assert '"type":"server_error"' in events[-2]


def test_unary_answer_cut_mid_body_is_retried_on_another(tmp_path):
    with twin_backends(tmp_path) as (gw, a, b):
        # a sends half of its next answer, then drops the connection: nothing reached the client yet
        httpx.post(f"{a.url}/debug/fault", json={"mode": "die_midstream", "count": 1})
        r = post(gw, CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert 'gateway_upstream_attempts_total{backend="a",result="connect_error"} 1.0' in metrics
