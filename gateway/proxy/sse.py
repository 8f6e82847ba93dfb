"""Server-sent events as vLLM writes them, and the few edits the gateway makes to them.

vLLM frames every event as ``data: <json>\\n\\n`` and ends with ``data: [DONE]\\n\\n``.
The relay looks at each event with cheap byte searches and only parses the JSON of the
events it must change: the usage chunk, the last finish chunk, error events, and reasoning
deltas from a vLLM that emits only one of the two reasoning field names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
SEP = b"\n\n"


class EventSplitter:
    """Feed raw bytes, get back complete events (each ending in a blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = self._buf + data if self._buf else data
        start = 0
        while True:
            end = buf.find(SEP, start)
            if end < 0:
                break
            yield buf[start : end + 2]
            start = end + 2
        self._buf = buf[start:]

    @property
    def pending(self) -> bytes:
        return self._buf


def encode(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + SEP


def decode(event: bytes) -> Any:
    """The JSON of a ``data:`` event (``data: `` prefix, trailing blank line)."""
    return orjson.loads(event[5:].strip())


# --------------------------------------------------------------------- classification


def is_done(event: bytes) -> bool:
    return event.startswith(b"data: [DONE]")


def is_usage(event: bytes) -> bool:
    return b'"choices":[]' in event and b'"usage"' in event


def is_error(event: bytes) -> bool:
    return event.startswith(b'data: {"error"')


def has_finish(event: bytes) -> bool:
    return b'"finish_reason":"' in event


def has_reasoning(event: bytes) -> bool:
    return b'"reasoning' in event


def is_comment(event: bytes) -> bool:
    return event.startswith(b":")


# --------------------------------------------------------------------- running usage

_USAGE = b',"usage":{'
_PROMPT = b'"prompt_tokens":'
_COMPLETION = b'"completion_tokens":'


def _int_after(raw: bytes, key: bytes) -> int:
    at = raw.find(key)
    if at < 0:
        return -1
    at += len(key)
    end = at
    while end < len(raw) and 48 <= raw[end] <= 57:  # digits
        end += 1
    return int(raw[at:end]) if end > at else -1


def running_usage(event: bytes, strip: bool) -> tuple[bytes, int, int]:
    """``(event, prompt_tokens, completion_tokens)`` from a chunk's running ``usage`` object.

    The gateway asks vLLM for ``stream_options.continuous_usage_stats`` so every chunk says
    how many tokens were generated so far (events can carry several tokens). With ``strip``
    the object is cut out of the event bytes (no JSON round trip) for clients that did not
    ask for it. Counts are -1 when the chunk has no usage object.
    """
    start = event.rfind(_USAGE)
    if start < 0:
        return event, -1, -1
    end = event.find(b"}", start)
    if event.find(b"{", start + len(_USAGE), end) >= 0:  # a nested object (prompt_tokens_details)
        end = event.find(b"}", end + 1)
    usage = event[start:end]
    counts = _int_after(usage, _PROMPT), _int_after(usage, _COMPLETION)
    if strip and end > 0:
        event = event[:start] + event[end + 1 :]
    return (event, *counts)


# --------------------------------------------------------------------- reasoning field names


def both_reasoning_names(holder: dict[str, Any]) -> bool:
    """Make ``reasoning`` and ``reasoning_content`` both present when either is; True if changed.

    vLLM <= 0.11.0 writes ``reasoning_content``, 0.11.1-0.15 both, >= 0.16 only ``reasoning``.
    The gateway promises both, whatever the backend's version.
    """
    has_new = "reasoning" in holder
    has_old = "reasoning_content" in holder
    if has_new == has_old:
        return False
    if has_new:
        holder["reasoning_content"] = holder["reasoning"]
    else:
        holder["reasoning"] = holder["reasoning_content"]
    return True


def reasoning_event(event: bytes) -> tuple[bytes, list[str]]:
    """The reasoning text a chunk carries, and the chunk with both field names.

    The chunk is re-encoded only if one of its deltas lacks one of the two names.
    """
    chunk = decode(event)
    changed = False
    texts = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if isinstance(delta, dict):
            changed |= both_reasoning_names(delta)
            text = delta.get("reasoning")
            if isinstance(text, str) and text:
                texts.append(text)
    return (encode(chunk) if changed else event), texts
