"""Failure injection for the gateway's error-path tests (``POST /debug/fault``).

``{"mode": MODE, "count": N, "after_chunks": K, "status": S, "message": M, "duration_s": D}``

- ``none``: clear every fault (and revive a dead engine, reopen a closed listener).
- ``refuse_connections``: close the listening socket, so new connections are refused (ECONNREFUSED)
  for ``duration_s`` seconds (default: until cleared, by ``{"mode": "none"}`` over a keep-alive
  connection opened before, or by SIGUSR1).
- ``error_before_first_byte``: answer generation requests with ``status`` (500 or 503, default 500)
  and vLLM's error body.
- ``die_midstream``: close the connection after ``after_chunks`` SSE events (non-streaming: after
  the headers and half of the body).
- ``midstream_error_event``: after ``after_chunks`` SSE events send vLLM's
  ``data: {"error": ...}`` event then ``data: [DONE]`` (streaming requests only).
- ``hang``: send nothing (streaming with ``after_chunks``: stop after that many events) until the
  client gives up.
- ``engine_dead``: ``/health`` answers 503, generation requests 500 (as vLLM after
  ``EngineDeadError``), in-flight requests fail.

``count`` is how many generation requests the fault affects (omitted: until cleared); a request
the mode does not apply to (a non-streaming one for ``midstream_error_event``) does not use it up.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = (
    "none",
    "refuse_connections",
    "error_before_first_byte",
    "die_midstream",
    "midstream_error_event",
    "hang",
    "engine_dead",
)


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    mode: str
    count: int | None = None
    after_chunks: int = 1
    status: int = 500
    message: str | None = None
    duration_s: float | None = None

    def applies(self, streaming: bool) -> bool:
        return streaming or self.mode != "midstream_error_event"

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "count": self.count,
            "after_chunks": self.after_chunks,
            "status": self.status,
            "message": self.message,
            "duration_s": self.duration_s,
        }


def parse_fault(spec: object) -> Fault:
    if not isinstance(spec, dict):
        raise FaultSpecError("the fault must be a JSON object")
    mode = spec.get("mode")
    if mode not in MODES:
        raise FaultSpecError(f"mode must be one of {', '.join(MODES)}")
    count = spec.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise FaultSpecError("count must be a positive integer (omit it for 'until cleared')")
    after = spec.get("after_chunks", 1)
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise FaultSpecError("after_chunks must be a non-negative integer")
    status = spec.get("status", 500)
    if status not in (500, 502, 503, 504):
        raise FaultSpecError("status must be 500, 502, 503 or 504")
    message = spec.get("message")
    if message is not None and not isinstance(message, str):
        raise FaultSpecError("message must be a string")
    duration = spec.get("duration_s")
    if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration <= 0):
        raise FaultSpecError("duration_s must be a positive number")
    return Fault(mode, count, after, status, message, duration)


class Faults:
    """The active fault, used up one request at a time."""

    def __init__(self) -> None:
        self.active: Fault | None = None

    def take(self, streaming: bool) -> Fault | None:
        fault = self.active
        if fault is None or fault.mode == "refuse_connections" or not fault.applies(streaming):
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.active = None
        return fault

    def state(self) -> dict:
        return {"active": self.active.as_dict() if self.active else None}
