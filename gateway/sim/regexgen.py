"""Strings that match a regular expression (``structured_outputs.regex``), and the checks vLLM
makes of regexes and grammars before it accepts them.

``regex_instance(pattern, salt)`` walks the parsed pattern (Python's own parser) choosing
branches, repeat counts and characters from a hash of ``salt``: deterministic per request, a
different string for a different prompt. Repeats are kept short (at most 4 beyond the minimum);
anchors and look-arounds are skipped. The result is checked with ``re.fullmatch``; a pattern the
walker cannot satisfy in a few tries gives its best attempt.

``grammar_error(grammar)`` finds what xgrammar's EBNF (GBNF) parser refuses: no ``root`` rule,
a rule used but never defined. Grammars without ``::=`` (Lark) are accepted as they are.
"""

from __future__ import annotations

import hashlib
import re
import string
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as sre  # type: ignore[attr-defined]

_CATEGORIES = {
    C.CATEGORY_DIGIT: string.digits,
    C.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    C.CATEGORY_SPACE: " ",
    C.CATEGORY_NOT_DIGIT: string.ascii_letters,
    C.CATEGORY_NOT_WORD: " .,-",
    C.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}
_PRINTABLE = string.ascii_letters + string.digits + " .,-_"


class _Rand:
    def __init__(self, salt: str) -> None:
        self.salt, self.n = salt, 0

    def pick(self, k: int) -> int:
        self.n += 1
        digest = hashlib.blake2b(f"{self.salt}\x00{self.n}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") % max(k, 1)


def regex_error(pattern) -> str | None:
    """Why vLLM would refuse the regex (None: it is fine)."""
    if not isinstance(pattern, str):
        return "Input should be a valid string"
    try:
        re.compile(pattern)
    except re.error as e:
        return f"Invalid regular expression: {e}"
    return None


def _charset(items, rand: _Rand) -> str:
    negate = False
    chars: list[str] = []
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            chars.append(chr(av))
        elif op is C.RANGE:
            lo, hi = av
            chars.extend(chr(c) for c in range(lo, min(hi, lo + 200) + 1))
        elif op is C.CATEGORY:
            chars.extend(_CATEGORIES.get(av, _PRINTABLE))
    if negate:
        allowed = [c for c in _PRINTABLE if c not in chars]
        return allowed[rand.pick(len(allowed))] if allowed else "~"
    return chars[rand.pick(len(chars))] if chars else ""


def _walk(items, rand: _Rand, groups: dict[int, str]) -> str:
    out: list[str] = []
    for op, av in items:
        if op is C.LITERAL:
            out.append(chr(av))
        elif op is C.NOT_LITERAL:
            allowed = [c for c in _PRINTABLE if ord(c) != av]
            out.append(allowed[rand.pick(len(allowed))])
        elif op is C.ANY:
            out.append(_PRINTABLE[rand.pick(len(_PRINTABLE))])
        elif op is C.IN:
            out.append(_charset(av, rand))
        elif op is C.BRANCH:
            branches = av[1]
            out.append(_walk(branches[rand.pick(len(branches))], rand, groups))
        elif op is C.SUBPATTERN:
            group, _, _, sub = av
            text = _walk(sub, rand, groups)
            if group is not None:
                groups[group] = text
            out.append(text)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
            lo, hi, sub = av
            top = lo + 4 if hi is C.MAXREPEAT else min(hi, lo + 4)
            count = lo + rand.pick(top - lo + 1)
            out.extend(_walk(sub, rand, groups) for _ in range(count))
        elif op is C.GROUPREF:
            out.append(groups.get(av, ""))
        elif op is C.CATEGORY:
            chars = _CATEGORIES.get(av, _PRINTABLE)
            out.append(chars[rand.pick(len(chars))])
        elif op is C.ATOMIC_GROUP:
            out.append(_walk(av, rand, groups))
        # AT (anchors), ASSERT / ASSERT_NOT (look-arounds): nothing to write
    return "".join(out)


def regex_instance(pattern: str, salt: str) -> str:
    """A string that ``re.fullmatch``-es ``pattern`` (deterministic in ``salt``)."""
    parsed = sre.parse(pattern)
    text = ""
    for attempt in range(8):
        text = _walk(parsed, _Rand(f"{salt}/{attempt}"), {})
        if re.fullmatch(pattern, text) is not None:
            return text
    return text


_RULE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*::=", re.MULTILINE)
_STRIP = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def grammar_error(grammar) -> str | None:
    """Why xgrammar would refuse the EBNF grammar (None: it is fine, or not EBNF)."""
    if not isinstance(grammar, str):
        return "Input should be a valid string"
    if "::=" not in grammar:
        return None  # Lark and other formats: accepted as they are
    defined = set(_RULE.findall(grammar))
    if "root" not in defined:
        return "Invalid grammar: the grammar has no rule named 'root'"
    body = _RULE.sub(" ", _STRIP.sub(" ", grammar))
    for name in _NAME.findall(body):
        if name not in defined:
            return f"Invalid grammar: rule '{name}' is not defined"
    return None
