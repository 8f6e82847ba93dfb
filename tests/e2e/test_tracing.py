"""OpenTelemetry traces through the real request path (``gateway/telemetry/tracing.py``).

A gateway in this process exports its spans to the SDK's in-memory exporter; its backend is a
simulator served in this process too, behind an ASGI tap that keeps the headers of every
generation request, so the ``traceparent`` vLLM would get can be read back. The last test
exports over OTLP/HTTP to a receiver started here, which decodes the protobuf body.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.config import (
    ApiKeyConfig,
    BackendConfig,
    Config,
    DcgmMeterConfig,
    KeysConfig,
    LedgerConfig,
    ServerConfig,
    TracingConfig,
)
from gateway.sim.cli import add_arguments, config_from_args
from gateway.sim.server import SimApp
from tests.support import MEDIUM, InProcessGateway, free_port, wait_until

KEY = "sk-trace-test"
PROMPT = "Tell me about the secret harbour of Zanzibar-Quokka."  # must appear in no span
STEPS = ["admit", "route", "shape", "upstream", "finish"]


class TappedSim:
    """A simulator served in this process, noting the headers of each generation request."""

    def __init__(self, *argv: str) -> None:
        import uvicorn

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        self.app = SimApp(config_from_args(parser.parse_args(list(argv))))
        self.seen: list[dict[str, str]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self._tap, host="127.0.0.1", port=self.port, loop="asyncio", lifespan="on",
                           interface="asgi3", access_log=False, log_level="warning")
        )  # fmt: skip
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 10, what="in-process simulator")
        assert self.server.started, "the in-process simulator did not start"

    async def _tap(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] == "POST":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def sim():
    served = TappedSim("--model", MEDIUM, "--params-b", "8", "--speed", "instant")
    yield served
    served.stop()


def config_for(tmp_path, sim: TappedSim, **tracing) -> Config:
    return Config(
        server=ServerConfig(health_interval_s=0.2, load_interval_s=0.2),
        backends=[BackendConfig(name="m", url=sim.url, meter=DcgmMeterConfig(type="dcgm", url=f"{sim.url}/dcgm/metrics"))],
        keys=KeysConfig(keys=[ApiKeyConfig(hash="sha256:" + hashlib.sha256(KEY.encode()).hexdigest(),
                                           name="alice", team="nlp-lab")]),
        ledger=LedgerConfig(path=str(tmp_path / "usage.db")),
        tracing=TracingConfig(**tracing),
    )  # fmt: skip


@pytest.fixture(scope="module")
def traced(sim, tmp_path_factory):
    exporter = InMemorySpanExporter()
    with InProcessGateway(config_for(tmp_path_factory.mktemp("traced"), sim), span_exporter=exporter) as gw:
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")
        yield gw, exporter, sim


def chat(gw, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24, **body}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, timeout=30,
                      headers={"authorization": f"Bearer {KEY}", **(headers or {})})  # fmt: skip


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The root span of ``trace_id`` and its children in start order (once the root has ended)."""
    def of_trace() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]

    # the root ends last (after the request is recorded): once it is there, so are its children
    (root,) = wait_until(lambda: [s for s in of_trace() if s.kind == SpanKind.SERVER], 5, what="the root span")
    spans = of_trace()
    children = sorted((s for s in spans if s is not root), key=lambda s: s.start_time)
    return root, children


def last_root(exporter: InMemorySpanExporter) -> ReadableSpan:
    return wait_until(lambda: [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER], 5)[-1]


def traceparent(headers: dict[str, str]) -> tuple[int, int, bool]:
    """trace id, parent span id, sampled."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def no_prompt_anywhere(spans: list[ReadableSpan]) -> None:
    for span in spans:
        for value in (span.attributes or {}).values():
            assert "Zanzibar" not in str(value), (span.name, value)
        for event in span.events:
            assert "Zanzibar" not in str(event.attributes), (span.name, event.name)


# ---------------------------------------------------------------- the request path


def test_unary_chat_is_one_root_span_with_the_five_steps(traced):
    gw, exporter, sim = traced
    exporter.clear()
    sim.seen.clear()
    r = chat(gw, temperature=0.5)
    assert r.status_code == 200, r.text
    answer = r.json()

    root = last_root(exporter)
    root, children = trace_of(exporter, root.context.trace_id)
    assert root.name == "chat auto" and root.kind == SpanKind.SERVER and root.parent is None
    assert [s.name for s in children] == STEPS
    for child in children:
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert child.status.status_code == StatusCode.UNSET
        assert child.start_time >= root.start_time and child.end_time <= root.end_time
    for before, after in zip(children, children[1:]):  # one step after another (a unary answer)
        assert before.end_time <= after.start_time, (before.name, after.name)
    assert root.status.status_code == StatusCode.UNSET

    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "vllm"
    assert a["gen_ai.request.model"] == "auto"
    assert a["gen_ai.response.model"] == MEDIUM == r.headers["x-gateway-routed-model"]
    assert a["gen_ai.request.max_tokens"] == 24
    assert a["gen_ai.request.temperature"] == 0.5
    assert "gen_ai.request.stream" not in a
    assert a["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"] > 0
    assert list(a["gen_ai.response.finish_reasons"]) == [answer["choices"][0]["finish_reason"]]
    assert a["http.response.status_code"] == 200
    assert a["nudge.request.id"] == r.headers["x-request-id"]
    assert a["nudge.route.reason"] == r.headers["x-gateway-route-reason"]
    assert a["nudge.route.tier"]
    assert a["nudge.energy.joules"] == pytest.approx(float(r.headers["x-gateway-energy-j"]), abs=1e-3)
    assert a["nudge.energy.source"] == r.headers["x-gateway-energy-source"]
    assert a["nudge.key.name"] == "alice" and a["nudge.team"] == "nlp-lab"
    assert a["nudge.policy.version"] and a["nudge.policy.version"] in r.headers["x-gateway-policy"]
    assert a["nudge.reasoning"] is False
    assert a["nudge.outcome"] == "ok"

    route = children[1].attributes
    assert route["nudge.route.model"] == MEDIUM and route["nudge.route.tier"] == a["nudge.route.tier"]
    upstream = children[3]
    assert upstream.kind == SpanKind.CLIENT
    u = upstream.attributes
    assert u["server.address"] == "127.0.0.1" and u["server.port"] == sim.port
    assert u["gen_ai.request.model"] == MEDIUM and u["gen_ai.request.max_tokens"] == 24
    assert u["nudge.backend"] == "m" and u["nudge.upstream.attempts"] == 1
    assert "gen_ai.response.time_to_first_chunk" not in u  # a unary answer has no first chunk

    # vLLM got the upstream span's context: its own spans join the trace under it
    (headers,) = sim.seen
    assert traceparent(headers) == (root.context.trace_id, upstream.context.span_id, True)
    assert headers["x-request-id"] == u["nudge.upstream.request_id"]
    no_prompt_anywhere([root, *children])


def test_a_stream_ends_its_upstream_span_with_the_stream_and_times_the_first_chunk(traced):
    gw, exporter, sim = traced
    exporter.clear()
    sim.seen.clear()
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "auto", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24}) as r:  # fmt: skip
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    usage = httpx.Response(200, content=lines[-1][6:]).json()["usage"]

    root, children = trace_of(exporter, last_root(exporter).context.trace_id)
    assert [s.name for s in children] == STEPS
    a = root.attributes
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert list(a["gen_ai.response.finish_reasons"]) in (["stop"], ["length"])
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < (root.end_time - root.start_time) / 1e9

    upstream, finish = children[3], children[4]
    u = upstream.attributes
    assert 0 < u["gen_ai.response.time_to_first_chunk"] <= a["gen_ai.response.time_to_first_chunk"]
    (event,) = [e for e in upstream.events if e.name == "first_chunk"]
    assert upstream.start_time < event.timestamp < upstream.end_time
    # the usage chunk settles the request while the stream is still open; the span ends with the stream
    assert finish.start_time < upstream.end_time <= finish.end_time <= root.end_time
    (headers,) = sim.seen
    assert traceparent(headers)[:2] == (root.context.trace_id, upstream.context.span_id)
    no_prompt_anywhere([root, *children])


def test_an_incoming_traceparent_is_continued(traced):
    gw, exporter, sim = traced
    exporter.clear()
    sim.seen.clear()
    client_trace, client_span = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    r = chat(gw, headers={"traceparent": f"00-{client_trace:032x}-{client_span:016x}-01"})
    assert r.status_code == 200
    root, children = trace_of(exporter, client_trace)
    assert root.parent is not None and root.parent.span_id == client_span and root.parent.is_remote
    assert [s.name for s in children] == STEPS
    assert traceparent(sim.seen[0])[0] == client_trace


def test_a_trace_the_client_did_not_sample_records_nothing_but_still_reaches_vllm(traced):
    gw, exporter, sim = traced
    exporter.clear()
    sim.seen.clear()
    client_trace = 0x0AF7651916CD43DD8448EB211C80319C
    r = chat(gw, headers={"traceparent": f"00-{client_trace:032x}-b7ad6b7169203331-00"})
    assert r.status_code == 200
    trace_id, _, sampled = traceparent(sim.seen[0])
    assert (trace_id, sampled) == (client_trace, False)  # vLLM follows the client's decision
    chat(gw)  # a sampled request after it: its spans are there, the unsampled one's never were
    last_root(exporter)
    assert not [s for s in exporter.get_finished_spans() if s.context.trace_id == client_trace]


@pytest.mark.parametrize(
    ("path", "body", "name", "api"),
    [
        ("/v1/completions", {"prompt": PROMPT}, "text_completion auto", "completions"),
        ("/v1/messages", {"messages": [{"role": "user", "content": PROMPT}]}, "chat auto", "messages"),
    ],
)
def test_other_endpoints_name_their_operation(traced, path, body, name, api):
    gw, exporter, _ = traced
    exporter.clear()
    r = httpx.post(f"{gw.url}{path}", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "auto", "max_tokens": 8, **body})  # fmt: skip
    assert r.status_code == 200, r.text
    root, children = trace_of(exporter, last_root(exporter).context.trace_id)
    assert (root.name, root.attributes["gen_ai.operation.name"], root.attributes["nudge.api"]) == (
        name, name.split()[0], api
    )
    assert [s.name for s in children] == STEPS
    assert root.attributes["gen_ai.usage.output_tokens"] > 0
    no_prompt_anywhere([root, *children])


# ---------------------------------------------------------------- errors


def test_an_invalid_request_is_a_failed_root_span(traced):
    gw, exporter, _ = traced
    exporter.clear()
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "auto", "messages": "hello"})  # fmt: skip
    assert r.status_code == 400
    root, children = trace_of(exporter, last_root(exporter).context.trace_id)
    assert children == []  # refused before admission
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == r.json()["error"]["type"] == "invalid_request_error"
    assert root.attributes["http.response.status_code"] == 400


def test_a_refusal_fails_the_step_that_refused(traced):
    gw, exporter, _ = traced
    exporter.clear()
    r = chat(gw, model="no-such-model-" + "x" * 1000)
    assert r.status_code == 404
    root, children = trace_of(exporter, last_root(exporter).context.trace_id)
    assert [s.name for s in children] == ["admit", "route", "finish"]
    assert [s.status.status_code for s in children] == [StatusCode.UNSET, StatusCode.ERROR, StatusCode.UNSET]
    assert children[1].attributes["error.type"] == root.attributes["error.type"] == "model_not_found"
    assert root.status.status_code == StatusCode.ERROR
    # the model a client names is unchecked input: bounded in the name and the attributes
    assert root.name == "chat no-such-model-" + "x" * (256 - len("no-such-model-"))
    assert len(root.attributes["gen_ai.request.model"]) == 256


def test_an_upstream_failure_fails_the_upstream_span_and_the_root(traced):
    gw, exporter, sim = traced
    exporter.clear()
    fault = httpx.post(f"{sim.url}/debug/fault", json={"mode": "error_before_first_byte", "status": 500, "count": 1})
    assert fault.status_code == 200
    r = chat(gw)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    root, children = trace_of(exporter, last_root(exporter).context.trace_id)
    assert [s.name for s in children] == STEPS
    upstream = children[3]
    assert upstream.status.status_code == StatusCode.ERROR
    assert upstream.attributes["error.type"] == (error["code"] or error["type"])
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == (error["code"] or error["type"])
    assert root.attributes["http.response.status_code"] == 502
    assert all(s.status.status_code == StatusCode.UNSET for s in children if s is not upstream)


def test_an_unknown_key_leaves_no_span(traced):
    gw, exporter, _ = traced
    exporter.clear()
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": "Bearer sk-nobody"},
                   json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert r.status_code == 401
    # a root span would end after the response was sent: wait until a later request's root has
    # ended (requests on one connection-less client finish in order), then look
    assert chat(gw).status_code == 200
    root = last_root(exporter)
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {root.context.trace_id}


# ---------------------------------------------------------------- off, and over OTLP


def test_tracing_off_sends_no_traceparent(sim, tmp_path):
    sim.seen.clear()
    with InProcessGateway(config_for(tmp_path, sim)) as gw:
        assert gw.gateway.tracing is None
        wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")
        r = chat(gw, headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
        assert r.status_code == 200
    (headers,) = sim.seen
    assert "traceparent" not in headers and "tracestate" not in headers


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_spans_are_exported_over_otlp_http(sim, tmp_path):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.received = []
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"  # no path: /v1/traces is added
    config = config_for(tmp_path, sim, otlp_endpoint=endpoint, service_name="gw-test", headers={"x-token": "t0k"})
    try:
        with InProcessGateway(config) as gw:
            wait_until(lambda: httpx.get(f"{gw.url}/readyz").status_code == 200, 10, what="backend discovered")
            assert chat(gw).status_code == 200
        # stopping the gateway flushed the batch processor: no waiting for its 5 s schedule
        assert _Receiver.received, "nothing exported at shutdown"
    finally:
        receiver.shutdown()
    spans, resources = [], []
    for path, headers, body in _Receiver.received:
        assert path == "/v1/traces"
        assert headers["content-type"] == "application/x-protobuf" and headers["x-token"] == "t0k"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resources.append({kv.key: kv.value.string_value for kv in resource_spans.resource.attributes})
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert all(r["service.name"] == "gw-test" for r in resources)
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"chat auto", *STEPS}
    root = by_name["chat auto"]
    attributes = {kv.key: kv.value for kv in root.attributes}
    assert attributes["gen_ai.request.model"].string_value == "auto"
    assert attributes["gen_ai.response.model"].string_value == MEDIUM
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0
    assert attributes["nudge.energy.joules"].double_value > 0
    assert all(span.parent_span_id == root.span_id for name, span in by_name.items() if name != "chat auto")
    assert by_name["upstream"].kind == 3  # SPAN_KIND_CLIENT in the protocol's numbering
    assert not any("Zanzibar" in str(kv.value) for span in spans for kv in span.attributes)
