"""Send each model family the switch that really turns thinking on or off.

The families differ (see FACTS.md and reference/vllm-api.md §2):

=========  ===========================  ==================================================
kind       examples                     what the gateway sends
=========  ===========================  ==================================================
hybrid     Qwen3                        ``chat_template_kwargs.enable_thinking`` = on/off
opt_in     Granite 3.x, DeepSeek-V3.1   ``chat_template_kwargs.thinking: true`` only when on
effort     gpt-oss                      ``reasoning_effort``: the level when on, ``low`` when
                                        off (it cannot be switched off)
always     DeepSeek-R1 distills, QwQ    nothing: it always thinks (the router avoids them)
none       Llama, Mistral, ...          nothing
=========  ===========================  ==================================================

``reasoning_effort`` reaches the backend only for effort models, and only with a value its
vLLM accepts: up to 0.15 only low/medium/high (anything else is a 400); the full OpenAI set
(none, minimal, ..., max) from 0.20. An unknown version is treated as old. When reasoning is
off, no switch the client sent survives unless it is a real ``false``: a template reads
``enable_thinking: 1`` or ``thinking: "yes"`` as on (``TEMPLATE_SWITCHES`` names the switches).
The gateway's own opt-in spellings (a top-level Anthropic-style ``thinking`` object, an
OpenRouter-style ``reasoning`` object) are removed: vLLM would only ignore them.
"""

from __future__ import annotations

import re
from typing import Any

OLD_EFFORTS = ("low", "medium", "high")
NEW_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_NEW_FROM = (0, 20)
# Where an old vLLM cannot take a level, the nearest one it can.
_NEAREST_OLD = {"none": "low", "minimal": "low", "xhigh": "high", "max": "high"}

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(version: str | None) -> tuple[int, int, int] | None:
    """'0.15.1' -> (0, 15, 1); '0.10.1.dev12+g3f2a' -> (0, 10, 1); None or junk -> None."""
    if not version:
        return None
    m = _VERSION.match(version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def accepted_efforts(vllm_version: str | None) -> tuple[str, ...]:
    v = parse_version(vllm_version)
    return NEW_EFFORTS if v is not None and v[:2] >= _NEW_FROM else OLD_EFFORTS


def effort_for(level: str, vllm_version: str | None) -> str:
    """``level`` if this vLLM accepts it, else the nearest level it does."""
    accepted = accepted_efforts(vllm_version)
    if level in accepted:
        return level
    return _NEAREST_OLD.get(level, "medium")


# chat_template_kwargs names that switch a model's thinking on in the templates vLLM serves
# (Qwen3: enable_thinking; DeepSeek-V3.1 and others: thinking; some: reasoning, enable_reasoning)
TEMPLATE_SWITCHES = ("enable_thinking", "thinking", "reasoning", "enable_reasoning")


def apply_switch(body: dict[str, Any], kind: str, on: bool, effort: str, vllm_version: str | None) -> tuple[bool, str]:
    """Edit ``body`` (the upstream chat request) in place.

    ``on``: whether the policy lets reasoning run; ``effort``: the level for effort models.
    Returns ``(runs, label)``: whether the model will think, and what for the
    ``x-gateway-reasoning`` header (``on``, ``off``, ``low``...).
    """
    if isinstance(body.get("thinking"), dict):
        del body["thinking"]
    if isinstance(body.get("reasoning"), dict):
        del body["reasoning"]
    body.pop("reasoning_effort", None)
    kwargs = body.get("chat_template_kwargs")
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
    if not on:
        # A chat template reads its switch as Jinja does: 1, "yes" and even "no" are true. Off
        # means no switch survives with anything but a real false.
        for name in TEMPLATE_SWITCHES:
            if name in kwargs and kwargs[name] is not False:
                del kwargs[name]

    if kind == "hybrid":
        kwargs["enable_thinking"] = on
        runs, label = on, "on" if on else "off"
    elif kind == "opt_in":
        if on:
            kwargs["thinking"] = True
        runs, label = on, "on" if on else "off"
    elif kind == "effort":
        level = effort_for(effort, vllm_version) if on else "low"
        body["reasoning_effort"] = level
        runs, label = True, level
    elif kind == "always":
        runs, label = True, "on"
    else:
        runs, label = False, "off"

    if kwargs:
        body["chat_template_kwargs"] = kwargs
    else:
        body.pop("chat_template_kwargs", None)
    return runs, label


def client_reasoning_wish(header: str | None, body: dict[str, Any]) -> tuple[bool | None, str, str | None]:
    """What the client asked for: ``(wish, via, effort)``.

    ``wish`` is True (opt in), False (explicitly off) or None (said nothing); ``via`` names
    how (``header``, ``reasoning_effort``, ``chat_template_kwargs``, ``thinking``,
    ``reasoning``); ``effort`` is a level if one was named. The header wins over the body.
    """
    if header:
        v = header.strip().lower()
        if v in _ON:
            return True, "header", None
        if v in NEW_EFFORTS and v != "none":
            return True, "header", v
        if v in _OFF:
            return False, "header", None
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort:
        e = effort.lower()
        if e == "none":
            return False, "reasoning_effort", None
        return True, "reasoning_effort", e if e in NEW_EFFORTS else None
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict):
        flags = [kwargs[name] for name in TEMPLATE_SWITCHES if kwargs.get(name) is not None]
        if any(flags):  # Jinja's truthiness is Python's for JSON values: 1 and "yes" switch it on
            return True, "chat_template_kwargs", None
        if flags:
            return False, "chat_template_kwargs", None
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        return thinking["type"] == "enabled", "thinking", None
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        level = reasoning.get("effort")
        if isinstance(level, str):
            if level == "none":
                return False, "reasoning", None
            return True, "reasoning", level if level in NEW_EFFORTS else None
        if isinstance(reasoning.get("enabled"), bool):
            return reasoning["enabled"], "reasoning", None
    return None, "", None


_ON = frozenset({"on", "true", "1", "yes", "enable", "enabled"})
_OFF = frozenset({"off", "false", "0", "no", "disable", "disabled", "none"})
