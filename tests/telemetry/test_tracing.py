"""Tracing's switch and set-up (``gateway/telemetry/tracing.py``, ``Gateway(..., span_exporter=)``).

The spans of real requests are tested end to end in ``tests/e2e/test_tracing.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import Gateway
from gateway.config import BackendConfig, Config, LedgerConfig, TracingConfig
from gateway.telemetry.tracing import Tracing, traces_url
from tests.support import ROOT


def config(**tracing) -> Config:
    return Config(
        backends=[BackendConfig(name="a", url="http://127.0.0.1:9")],
        ledger=LedgerConfig(path=":memory:"),
        tracing=TracingConfig(**tracing),
    )


def test_off_by_default_and_opentelemetry_is_never_imported():
    script = textwrap.dedent(
        """
        import sys
        from gateway.app import Gateway
        from gateway.config import BackendConfig, Config, LedgerConfig
        gw = Gateway(Config(backends=[BackendConfig(name="a", url="http://127.0.0.1:9")],
                            ledger=LedgerConfig(path=":memory:")))
        assert gw.tracing is None
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry") or m == "gateway.telemetry.tracing"))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_endpoint_without_the_extra_is_a_config_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "gateway.telemetry.tracing")
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import opentelemetry...` fails, as without the extra
    with pytest.raises(ValueError, match=r"pip install 'nudge-gateway\[otel\]'") as caught:
        Gateway(config(otlp_endpoint="http://collector:4318"))
    assert "tracing.otlp_endpoint" in str(caught.value)


def test_each_gateway_has_its_own_provider_and_leaves_the_global_one_alone():
    before = trace.get_tracer_provider()
    one = Gateway(config(), span_exporter=InMemorySpanExporter())
    two = Gateway(config(otlp_endpoint="http://collector:4318", service_name="other"))
    assert one.tracing is not None and two.tracing is not None
    assert one.tracing.provider is not two.tracing.provider
    assert two.tracing.provider.resource.attributes["service.name"] == "other"
    assert trace.get_tracer_provider() is before
    one.tracing.shutdown()
    two.tracing.shutdown()


def test_sampling_is_parent_based_and_the_ratio_applies_to_callers_sampled_traces_too():
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(sample_ratio=0.0), exporter)
    assert not tracing.request({}, "chat").root.is_recording()  # a new trace: the ratio decides
    sampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    # a caller's sampled flag does not bypass the ratio (any client could make every request traced)
    assert not tracing.request(sampled, "chat").root.is_recording()
    tracing.shutdown()

    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(sample_ratio=1.0), exporter)
    root = tracing.request(sampled, "chat").root
    assert root.is_recording() and root.get_span_context().trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    root.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["chat"]
    unsampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    assert not tracing.request(unsampled, "chat").root.is_recording()  # the caller's "no" is kept
    tracing.shutdown()


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otlp.example/v1/traces", "https://otlp.example/v1/traces"),
        ("https://otlp.example/custom/path", "https://otlp.example/custom/path"),
    ],
)
def test_an_endpoint_without_a_path_gets_the_standard_one(endpoint, url):
    assert traces_url(endpoint) == url
