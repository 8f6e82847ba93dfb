"""Server-sent events as vLLM writes them, and the few edits the gateway makes to them.

vLLM frames every event as ``data: <json>\\n\\n`` and ends with ``data: [DONE]\\n\\n``.
The relay looks at each event with cheap byte searches and only parses the JSON of the
events it must change: the usage chunk, the last finish chunk, error events, and reasoning
deltas from a vLLM that emits only one of the two reasoning field names.
"""

from __future__ import annotations

from typing import Any, Iterator

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
