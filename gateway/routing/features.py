"""What the router knows about a request before anything is generated.

The adequacy model (``adequacy.py``) reads a request through :class:`Features`: the set of
words in the prompt (for a linear model with one weight per known word) and a short vector
of dense numbers (length, digits, maths and code markers, options, the request's knobs).
This runs on every request, so it is plain stdlib, one pass of a compiled regex and a few
``str.count`` calls; long prompts are scanned only at the head and the tail.

Typical use::

    text = request_text(body)                      # chat ``messages`` or completion ``prompt``
    feats = extract(text, max_tokens=body.get("max_tokens"), has_tools=bool(body.get("tools")))

Training (``bench/train_router.py``) builds its prompts with the same two functions, so the
words and numbers a trained weight refers to are exactly the ones seen here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DENSE_NAMES", "Features", "extract", "from_request", "prompt_text", "request_text"]

# Prompts longer than this are scanned at the head and the tail only; the length features
# still see the whole prompt. Keeps the worst case bounded (see bench/router_latency.py).
SCAN_HEAD = 8_000
SCAN_TAIL = 4_000

# Words: runs of letters in any script (digits and "_" excluded), lower-cased.
_WORD = re.compile(r"[^\W\d_]+")
# Multiple-choice options at the start of a line: "A. foo", "(b) bar", "C) baz".
_OPTION = re.compile(r"(?m)^[ \t]*\(?[A-Ja-j][.)][ \t]")
_DIGITS = "0123456789"
_MATH = "=+*/^<>\\$∫∑√π≤≥±×÷∂∞"
_CODE_MARKERS = ("```", "def ", "return ", "import ", "#include", "function ", "=>", "};", "();", "):\n")
# The "role: " prefixes that prompt_text() puts before each message: not words of the prompt
# (every training prompt has one, so as a word it would only act as a length-dependent bias).
_ROLE = re.compile(r"(?m)^(?:system|user|assistant|tool|developer|function): ")
# Numbers (integers, decimals, 1,000-style); enumerated or bulleted lines ("1.", "2)", "- ", "* ");
# sentence ends.
_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")
_ENUM = re.compile(r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]")
_SENT = re.compile(r"[.!?](?:\s|$)")

DENSE_NAMES: tuple[str, ...] = (
    "log_chars",  # ln(1 + characters in the whole prompt)
    "log_words",  # ln(1 + words in the scanned text)
    "digit_frac",  # digits / characters
    "math_frac",  # maths symbols / characters
    "lines",  # ln(1 + newlines)
    "code",  # ln(1 + code markers: fences, def/return/import, braces)
    "options",  # ln(1 + lines that look like "A. ..." multiple-choice options)
    "questions",  # ln(1 + question marks)
    "turns",  # ln(number of chat messages)
    "has_max_tokens",  # 1 if the client set max_tokens
    "log_max_tokens",  # ln(1 + max_tokens), 0 when unset
    "has_tools",  # tools / functions offered
    "has_schema",  # response_format json_schema / json_object or guided decoding
    "reasoning",  # reasoning (thinking) requested
    "numbers",  # ln(1 + numbers in the scanned text)
    "enumerated",  # ln(1 + numbered or bulleted lines: steps, constraints, parts)
    "sentences",  # ln(1 + sentence ends)
    "long_words",  # share of words with 9 letters or more (technical vocabulary)
)


@dataclass(frozen=True, slots=True)
class Features:
    """Everything the adequacy model reads about one request.

    ``terms`` is the set of distinct lower-cased words of the (scanned) prompt text;
    ``dense`` holds one float per name in :data:`DENSE_NAMES`, in that order.
    """

    terms: frozenset[str]
    dense: tuple[float, ...]
    n_chars: int

    def as_dict(self) -> dict[str, float]:
        """The dense features by name (for logs and debugging)."""
        return dict(zip(DENSE_NAMES, self.dense))


def extract(
    text: str,
    *,
    max_tokens: int | None = None,
    has_tools: bool = False,
    has_schema: bool = False,
    reasoning: bool = False,
    turns: int = 1,
) -> Features:
    """Features of a prompt ``text`` (see :func:`request_text`) and the request's knobs."""
    text = text or ""
    n_chars = len(text)
    if n_chars > SCAN_HEAD + SCAN_TAIL:
        text = text[:SCAN_HEAD] + "\n" + text[-SCAN_TAIL:]
    body = _ROLE.sub("", text)
    words = _WORD.findall(body.lower())
    terms = frozenset(words)
    n = len(text) or 1
    count = text.count
    mt = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    dense = (
        math.log1p(n_chars),
        math.log1p(len(words)),
        sum(map(count, _DIGITS)) / n,
        sum(map(count, _MATH)) / n,
        math.log1p(count("\n")),
        math.log1p(sum(map(count, _CODE_MARKERS)) + count("{")),
        math.log1p(len(_OPTION.findall(text))),
        math.log1p(count("?")),
        math.log(max(1, turns)),
        1.0 if mt else 0.0,
        math.log1p(mt),
        1.0 if has_tools else 0.0,
        1.0 if has_schema else 0.0,
        1.0 if reasoning else 0.0,
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(len(_ENUM.findall(body))),
        math.log1p(len(_SENT.findall(text))),
        sum(1 for w in words if len(w) >= 9) / len(words) if words else 0.0,
    )
    return Features(terms, dense, n_chars)


def prompt_text(messages: Iterable[Any] | None = None, prompt: Any = None) -> str:
    """The text of a chat ``messages`` list, or else of a completion ``prompt``.

    Each message becomes ``"role: content"``, separated by blank lines. Content may be a
    string, a list of parts (text parts are kept, images and audio ignored) or None; a
    message's tool calls contribute their function names and arguments. A completion
    prompt may be a string or a list of strings; token-id prompts have no text.
    """
    if messages:
        chunks = []
        for msg in messages:
            if not isinstance(msg, Mapping):
                continue
            body = _content_text(msg.get("content"))
            for call in msg.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    body += f"\n{fn.get('name') or ''}({fn.get('arguments') or ''})"
            chunks.append(f"{msg.get('role') or 'user'}: {body}")
        return "\n\n".join(chunks)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""


def request_text(body: Mapping[str, Any]) -> str:
    """The prompt text of an OpenAI chat or completion request body."""
    return prompt_text(body.get("messages"), body.get("prompt"))


def from_request(body: Mapping[str, Any], *, reasoning: bool | None = None, text: str | None = None) -> Features:
    """Features straight from an OpenAI request body.

    ``reasoning`` overrides what the body says (``reasoning_effort`` other than
    ``"none"``/``"minimal"``, or ``chat_template_kwargs.enable_thinking``/``thinking``).
    ``text`` is ``request_text(body)`` when the caller has it already.
    """
    messages = body.get("messages")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if reasoning is None:
        effort = body.get("reasoning_effort")
        kwargs = body.get("chat_template_kwargs")
        kwargs = kwargs if isinstance(kwargs, Mapping) else {}
        reasoning = bool(
            (effort and effort not in ("none", "minimal")) or kwargs.get("enable_thinking") or kwargs.get("thinking")
        )
    return extract(
        request_text(body) if text is None else text,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        has_tools=bool(body.get("tools") or body.get("functions")),
        has_schema=_has_schema(body),
        reasoning=reasoning,
        turns=len(messages) if isinstance(messages, list) else 1,
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])  # {"type": "text", "text": ...}; images carry no text
        return "\n".join(parts)
    return str(content)


def _has_schema(body: Mapping[str, Any]) -> bool:
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_schema", "json_object"):
        return True
    return any(body.get(k) for k in ("guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs"))
