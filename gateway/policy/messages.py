"""Fill message templates: numbers rounded short and honest, placeholders never fail.

Templates are validated at load (schema.Messages), so a placeholder missing at render time
can only be a value the gateway does not know for this request (e.g. energy when metering
is off): it renders as "?" rather than breaking the answer.
"""

from __future__ import annotations

import math


class _Values(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def render(text: str, values: dict[str, str]) -> str:
    return text.format_map(_Values(values))


def num(x: float) -> str:
    """Short, honest rounding: 0.0123, 0.42, 3.14, 42.5, 1234 (no trailing zeros)."""
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    digits = 1 if ax >= 10 else 2 if ax >= 1 else max(2, 1 - math.floor(math.log10(ax)) + 1)
    return f"{x:.{digits}f}".rstrip("0").rstrip(".")


def usd(x: float) -> str:
    if x == 0:
        return "$0"
    return f"${x:.2f}" if x >= 1 else ("<$0.000001" if x < 1e-6 else f"${num(x)}")


def pct(p: float | None) -> str:
    return "?" if p is None else f"{p * 100:.0f}%"


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m"
    return f"{s}s"
