"""Small helpers shared by the simulator tests: Prometheus parsing, SSE splitting, requests."""

from __future__ import annotations

import json
import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "Qwen/Qwen3-8B"
HI = [{"role": "user", "content": "Hello, who are you?"}]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus exposition, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(sim, name: str, **labels) -> float:
    """Sum of the samples called ``name`` on ``/metrics`` whose labels include ``labels``."""
    text = httpx.get(sim.url + "/metrics").text
    return sum(v for (n, lab), v in samples(text).items() if n == name and set(labels.items()) <= lab)


_DCGM_LINE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def dcgm(sim) -> dict[str, list[tuple[dict, float]]]:
    """``/dcgm/metrics`` as {metric: [(labels, value), ...]}, names as printed (dcgm-exporter has no _total)."""
    out: dict[str, list] = {}
    for line in httpx.get(sim.url + "/dcgm/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        name, labels, value = _DCGM_LINE.match(line).groups()
        out.setdefault(name, []).append((dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)))
    return out


def energy_counter_mj(sim) -> float:
    return sum(v for _, v in dcgm(sim)["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"])


def split_sse(raw: bytes) -> list[bytes]:
    """The events of an SSE body; asserts the framing is exactly ``data: ...\\n\\n`` throughout."""
    assert raw.endswith(b"\n\n"), raw[-50:]
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event, event[:80]
    return [e[len(b"data: ") :] for e in events]


def stream_chat(sim, body: dict, headers: dict | None = None) -> tuple[list[dict], bytes]:
    """POST a streaming chat request; returns the JSON events (without [DONE]) and the raw body."""
    with httpx.stream(
        "POST", sim.url + "/v1/chat/completions", json={"stream": True, **body}, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = r.read()
    events = split_sse(raw)
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]], raw


def chat(sim, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(sim.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
