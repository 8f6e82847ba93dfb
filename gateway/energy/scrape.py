"""Blocking HTTP scrapes for the sampler thread, and lean Prometheus text parsing.

The sampler reads two pages every tick: the backend's vLLM ``/metrics`` and, for the ``dcgm``
meter, a dcgm-exporter page. Both are read from the sampler's own thread (never the event
loop) with a keep-alive ``http.client`` connection, and parsed by looking only for the few
metric names we need instead of parsing every family (a vLLM page is mostly histograms).
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


class HttpGetter:
    """GET one URL again and again over a kept-alive connection; None (and ``error``) on failure."""

    def __init__(self, url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Accept": "text/plain", **(headers or {})}
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.error: str | None = None

    def get(self) -> str | None:
        for attempt in (0, 1):  # a kept-alive connection the server closed fails once; retry fresh
            conn = self._conn
            fresh = conn is None
            if conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                conn = self._conn = cls(self._host, self._port, timeout=self._timeout)
            try:
                conn.request("GET", self._path, headers=self._headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                self.error = f"{exc.__class__.__name__}: {exc}"
                if fresh or attempt:
                    return None
                continue
            if resp.will_close:
                self.close()
            if resp.status != 200:
                self.error = f"HTTP {resp.status} from {self.url}"
                return None
            self.error = None
            return body.decode("utf-8", "replace")
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def samples(text: str, name: str) -> Iterator[tuple[str, float]]:
    """``(label text, value)`` of every sample of metric ``name`` in a Prometheus text page."""
    size = len(name)
    i = text.find(name)
    while i != -1:
        j = i + size
        if (i == 0 or text[i - 1] == "\n") and text[j : j + 1] in ("{", " "):
            end = text.find("\n", j)
            line = text[j:] if end == -1 else text[j:end]
            labels = ""
            if line[0] == "{":
                close = line.rfind("}")
                labels, line = line[1:close], line[close + 1 :]
            parts = line.split()
            if parts:
                try:
                    yield labels, float(parts[0])
                except ValueError:
                    pass
        i = text.find(name, j)


def parse_labels(text: str) -> dict[str, str]:
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(text)}


# ---------------------------------------------------------------- vLLM


@dataclass(slots=True)
class VllmCounters:
    """What the backend itself says it did, summed over its engines."""

    prompt_tokens: float
    generation_tokens: float
    running: float
    waiting: float
    models: list[str] = field(default_factory=list)


def parse_vllm(text: str) -> VllmCounters | None:
    """The four series attribution needs; None if the page has no vLLM token counters."""
    models: list[str] = []
    totals = []
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        total, seen = 0.0, False
        for labels, value in samples(text, name):
            total += value
            seen = True
            model = parse_labels(labels).get("model_name")
            if model and model not in models:
                models.append(model)
        if not seen:
            return None
        totals.append(total)
    running = sum(v for _, v in samples(text, "vllm:num_requests_running"))
    waiting = sum(v for _, v in samples(text, "vllm:num_requests_waiting"))
    return VllmCounters(totals[0], totals[1], running, waiting, models)


def counter_delta(previous: float, current: float) -> float:
    """Increase of a counter between two reads; a counter that went back restarted from zero."""
    return current - previous if current >= previous else current


# ---------------------------------------------------------------- DCGM

DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # counter, mJ since the driver loaded
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"  # gauge, W


def _selected(labels: dict[str, str], select: dict[str, list[str]]) -> bool:
    return all(labels.get(key) in values for key, values in select.items())


def gpu_key(labels: dict[str, str]) -> str:
    """A GPU's identity: its UUID, else host and index."""
    uuid = labels.get("UUID") or labels.get("uuid")
    if uuid:
        return uuid
    return f"{labels.get('Hostname', '')}/{labels.get('gpu', '')}/{labels.get('device', '')}"


def parse_dcgm(text: str, select: dict[str, list[str]]) -> dict[str, tuple[float, float | None]]:
    """``{gpu: (energy mJ, power W or None)}`` for the GPUs whose labels match ``select``.

    ``select`` maps a label to the values accepted (any of them); every label must match.
    """
    energy: dict[str, float] = {}
    for labels, value in samples(text, DCGM_ENERGY):
        parsed = parse_labels(labels)
        if _selected(parsed, select):
            energy[gpu_key(parsed)] = value
    power: dict[str, float] = {}
    for labels, value in samples(text, DCGM_POWER):
        parsed = parse_labels(labels)
        if _selected(parsed, select):
            power[gpu_key(parsed)] = value
    return {key: (mj, power.get(key)) for key, mj in energy.items()}
