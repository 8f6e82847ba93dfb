"""What the router can see about a request before anything is generated.

A request is read as a :class:`Prompt`: the whole conversation as text (for its length and
the context check) and the *task*, the last user message (a few-shot prompt's last example
block), which is what the answer has to do. :func:`extract` turns a prompt into
:class:`Features`:

* ``terms``: the distinct lower-cased words of the task, for one learned weight per known word;
* ``dense``: a short vector of structure that is visible before generation
  (:data:`DENSE_NAMES`): how long the task and the conversation are, digits and maths and
  code markers, multiple-choice options, how many constraints the task sets, conversation
  depth, tools or a response schema attached, reasoning asked for, and what *kind* of task it
  is (small talk, arithmetic, a short lookup, rewrite/translate/summarise, creative writing,
  code, maths, multi-step reasoning, explanation or advice), from cue words and patterns, and
  whether it is *trivial* (small talk, a bare sum, a one-line question of a few words).

The task-kind cues are English; a prompt in another language gets none of them and is known
by its share of non-ASCII letters instead. This runs on every request: a few compiled regexes
over at most :data:`SCAN_HEAD` + :data:`SCAN_TAIL` characters and some ``str.count`` calls,
stdlib only (``bench/router_latency.py`` measures it).

Typical use::

    feats = from_request(body)                   # an OpenAI chat or completion request body
    feats = extract(prompt_of(messages=[...]))   # the same from parts

Training (``bench/train_router.py``) builds its prompts with the same functions, so the words
and numbers a trained weight refers to are exactly the ones seen here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DENSE_NAMES",
    "Features",
    "Prompt",
    "extract",
    "from_request",
    "prompt_of",
    "prompt_text",
    "request_text",
    "task_class",
]

# Long texts are scanned at the head and the tail only; the length features still see the
# whole text. Keeps the worst case bounded (see bench/router_latency.py).
SCAN_HEAD = 6_000
SCAN_TAIL = 2_000
KIND_HEAD = 1_500  # what kind of task it is shows at its start: phrases are looked for there

# Words: runs of letters in any script (digits and "_" excluded), lower-cased. ASCII text (the
# common case) is split with str.translate, six times faster than the regex and the same words.
_WORD = re.compile(r"[^\W\d_]+")
_NOT_LETTER = str.maketrans({c: " " for c in map(chr, range(128)) if not ("a" <= c <= "z")})
# Multiple-choice options at the start of a line: "A. foo", "(b) bar", "C) baz".
_OPTION = re.compile(r"(?m)^[ \t]*\(?[A-Ja-j][.)][ \t]")
_DIGITS = "0123456789"
_MATH = "=+*/^<>\\$∫∑√π≤≥±×÷∂∞"
_CODE_MARKERS = ("```", "def ", "return ", "import ", "#include", "function ", "=>", "};", "();", "):\n")
# Numbers (integers, decimals, 1,000-style); enumerated or bulleted lines ("1.", "2)", "- ", "* ");
# sentence ends.
_NUMBER = re.compile(r"[0-9]+(?:[.,][0-9]+)*")
_ENUM = re.compile(r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]")
_SENT = re.compile(r"[.!?](?:\s|$)")
# A few-shot prompt repeats its example blocks ("Question: ... Answer: ..."); the task is the last.
_SHOT = re.compile(r"(?m)^(?:Question|Q|Problem|Input|Example \d+)\s*:")

# --- what kind of task: cue words and cue phrases, English, lower-case. Code, maths and reasoning
# words count anywhere in the task; rewrite, creative and advice cues only in its first KIND_HEAD
# characters (a document to summarise may well contain the word "story"); phrases only there too.
_GREETING = re.compile(
    r"^\W*(?:hi|hello|hey|hiya|howdy|yo|greetings|good (?:morning|afternoon|evening|night)|thanks|thank you|"
    r"thx|ok|okay|cool|nice|great|bye|goodbye|see you|how are you|how's it going|what's up|sup|who are you|"
    r"what is your name|what's your name|are you there)\b[\w\s,!.?']{0,40}$"
)
_ARITH = re.compile(
    r"^\W*(?:what(?: is|'s)|how much is|calculate|compute|solve|evaluate)?\s*[-+]?\d[\d\s.,]*"
    r"(?:[-+*/x×÷^%]\s*[-+]?\d[\d\s.,]*)+\s*(?:=\s*)?\??\s*$"
)
_LOOKUP = re.compile(
    r"^\W*(?:who|what|when|where|which|whose|how (?:many|much|old|tall|far|long|big)|define|name the|"
    r"what's|what does|what do|is|are|was|were|did|does|can)\b"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_REWRITE = (
    _words(
        "rewrite rephrase paraphrase reword translate translation summarise summarize summary tldr "
        "proofread grammar shorten simplify condense extract classify categorise categorize sentiment"
    ),
    re.compile(
        r"re-write|tl;dr|correct (?:the|this|my|any)|fix (?:the |my )?(?:grammar|spelling|typos)|"
        r"make (?:it|this) (?:more|less|shorter|longer|formal|casual)|convert (?:this|the|it)|"
        r"label (?:the|each|this)|list the|bullet points"
    ),
)
_CREATIVE = (
    _words(
        "poem poetry haiku sonnet limerick verse rhyme lyrics song story stories tale fable fiction novel "
        "screenplay dialogue joke pun riddle slogan tagline toast speech essay letter email tweet blog "
        "caption bio advert imagine pretend roleplay creative"
    ),
    re.compile(
        r"script for|post about|cover letter|product description|e-mail|role-play|act as|"
        r"in the style of"
    ),
)
_CODE = (
    _words(
        "python javascript typescript java golang rust kotlin swift php ruby perl scala haskell bash shell "
        "powershell sql html css regex regexp json yaml xml react vue angular django flask node nodejs pandas "
        "numpy pytorch tensorflow docker kubernetes git api apis sdk sdks function functions method methods "
        "class classes variable variables compile compiles compiled compiling compiler compilers runtime "
        "debug debugging debugger bug bugs error errors exception exceptions traceback segfault script "
        "scripts program programs programming code coding implement implements implemented implementing "
        "implementation algorithm algorithms refactor refactoring endpoint endpoints database databases "
        "query queries threads concurrent concurrency concurrently mutex async template templates templated "
        "recursion recursive"
    ),
    re.compile(
        r"```|(?<![\w+#])(?:c\+\+|c#|f#)(?![\w+#])|stack trace|unit tests?|thread-?safe|"
        r"data structures?|linked list|hash ?map|binary search"
    ),
)
_MATH_TASK = (
    _words(
        "solve calculate compute equation equations integral integrate derivative differentiate "
        "probability matrix eigenvalue eigenvalues eigenvector eigenvectors vector polynomial prime "
        "factorise factorize divisible modulo logarithm series geometry triangle circle angle algebra "
        "arithmetic percent percentage ratio combinatorics combinatorial inequality theorem lemma"
    ),
    re.compile(r"expected value|sum of|product of|limit of|how many ways"),
)
_REASON = (
    _words(
        "prove proof proofs derive derivation rigorous rigorously deduce justify puzzle riddle "
        "counterexample lemma theorem induction contradiction formally"
    ),
    re.compile(r"show that|step by step|step-by-step"),
)
_EXPLAIN = (
    _words(
        "explain describe advice recommend suggest tips ideas compare contrast analyse analyze analysis "
        "evaluate critique assess design plan strategy optimise optimize tradeoff tradeoffs"
    ),
    re.compile(
        r"how (?:do|does|can|should|would|to)|what are (?:the|some)|tell me about|difference between|"
        r"help me|should i|best way|pros and cons|trade-offs?|why (?:does|is|do|are)|what would happen"
    ),
)
_CONSTRAINT_WORDS = _words(
    "must should exactly without only never always include including exclude avoid ensure "
    "limit maximum minimum words sentences paragraphs bullet table format json markdown steps "
    "each every both"
)
_CONSTRAINT_PHRASES = re.compile(
    r"at least|at most|no more than|no less than|fewer than|less than|more than|do not|"
    r"don't|make sure|all of"
)


def _kind(cues: tuple[frozenset[str], re.Pattern[str]], terms: frozenset[str], head: str) -> bool:
    return not terms.isdisjoint(cues[0]) or cues[1].search(head) is not None


DENSE_NAMES: tuple[str, ...] = (
    # length and shape
    "log_chars",  # ln(1 + characters of the whole conversation)
    "log_task_words",  # ln(1 + words of the task)
    "context_share",  # share of the conversation's content that is not the task (documents, history, system)
    "digit_frac",  # digits / characters of the task
    "math_frac",  # maths symbols / characters of the task
    "lines",  # ln(1 + newlines of the task)
    "code",  # ln(1 + code markers: fences, def/return/import, braces)
    "options",  # ln(1 + lines that look like "A. ..." multiple-choice options)
    "questions",  # ln(1 + question marks)
    "numbers",  # ln(1 + numbers in the task)
    "enumerated",  # ln(1 + numbered or bulleted lines: steps, constraints, parts)
    "sentences",  # ln(1 + sentence ends in the task)
    "long_words",  # share of the task's words with 9 letters or more (technical vocabulary)
    "non_ascii",  # share of the task's letters outside ASCII (another language or script)
    "constraints",  # ln(1 + constraint words: must, exactly, at least, without, format, ...)
    "shots",  # ln(1 + few-shot example blocks before the task)
    # the request's knobs
    "turns",  # ln(number of user messages)
    "system",  # ln(1 + characters of system / developer messages)
    "has_max_tokens",  # 1 if the client set max_tokens
    "log_max_tokens",  # ln(1 + max_tokens), 0 when unset
    "has_tools",  # tools / functions offered
    "has_schema",  # response_format json_schema / json_object or guided decoding
    "reasoning",  # reasoning (thinking) requested
    # what kind of task (1 / 0; several may hold)
    "k_greeting",  # small talk: hi, thanks, how are you
    "k_arithmetic",  # a bare sum: "what is 17*3?"
    "k_lookup",  # a short wh-question: "what is the capital of France?"
    "k_rewrite",  # rewrite, translate, summarise, extract, classify
    "k_creative",  # poem, story, letter, email, role-play
    "k_code",  # programming
    "k_math",  # maths beyond a bare sum
    "k_reasoning",  # multi-step reasoning: prove, derive, show that, step by step, puzzles
    "k_explain",  # explain, how do I, advice, compare, analyse, design, plan
    "trivial",  # small talk, a bare sum, or a one-line question of at most eight words (see TRIVIAL_WORDS)
)

# A one-line question this short, with no digits, no code and no earlier turns, is treated as within
# every model's reach (with greetings and bare sums): the router's model adds a fixed prior for it.
TRIVIAL_WORDS = 8


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request as the router reads it: the whole conversation, and the task within it."""

    text: str  # every message as "role: content", blank-line separated (or the completion prompt)
    task: str  # the last user message's text (a few-shot prompt: its last example block)
    turns: int = 1  # user messages
    system_chars: int = 0
    context_chars: int = 0  # characters of every other message's content (history, documents, system)


@dataclass(frozen=True, slots=True)
class Features:
    """Everything the router's model reads about one request.

    ``terms`` is the set of distinct lower-cased words of the (scanned) task;
    ``dense`` holds one float per name in :data:`DENSE_NAMES`, in that order.
    """

    terms: frozenset[str]
    dense: tuple[float, ...]
    n_chars: int

    def as_dict(self) -> dict[str, float]:
        """The dense features by name (for logs and debugging)."""
        return dict(zip(DENSE_NAMES, self.dense))


def _scan(text: str) -> str:
    if len(text) > SCAN_HEAD + SCAN_TAIL:
        return text[:SCAN_HEAD] + "\n" + text[-SCAN_TAIL:]
    return text


def _last_shot(task: str) -> tuple[str, int]:
    """A few-shot task's last example block and how many came before it."""
    if "uestion" not in task and ":" not in task[:4000]:
        return task, 0
    shots = list(_SHOT.finditer(task))
    if len(shots) < 2:
        return task, 0
    return task[shots[-1].end() :].lstrip(), len(shots) - 1


def extract(
    prompt: Prompt | str,
    *,
    max_tokens: int | None = None,
    has_tools: bool = False,
    has_schema: bool = False,
    reasoning: bool = False,
) -> Features:
    """Features of a :class:`Prompt` (a plain string is one user message) and the request's knobs."""
    if not isinstance(prompt, Prompt):
        prompt = Prompt(prompt or "", prompt or "") if isinstance(prompt, str) or prompt is None else Prompt("", "")
    n_chars = len(prompt.text)
    task, shots = _last_shot(_scan(prompt.task or ""))
    low = task.lower()
    words = low.translate(_NOT_LETTER).split() if low.isascii() else _WORD.findall(low)
    terms = frozenset(words)
    n_words = len(words)
    n = len(task) or 1
    count = task.count
    letters = sum(map(len, words)) or 1
    non_ascii = 0.0 if low.isascii() else sum(len(w) for w in words if not w.isascii()) / letters
    head = low[:KIND_HEAD]
    head_terms = (
        terms
        if len(low) <= KIND_HEAD
        else frozenset(head.translate(_NOT_LETTER).split() if head.isascii() else _WORD.findall(head))
    )
    short = n_words <= 12
    arithmetic = n_words <= 8 and _ARITH.match(low) is not None
    greeting = short and _GREETING.match(low) is not None
    lookup = n_words <= 25 and not arithmetic and _LOOKUP.match(low) is not None and count("\n") <= 1
    code = _kind(_CODE, terms, head)
    sentences = len(_SENT.findall(task))
    trivial = (
        greeting
        or arithmetic
        or (
            lookup
            and n_words <= TRIVIAL_WORDS
            and prompt.turns == 1
            and not code
            and not any(map(task.__contains__, _DIGITS))
            and sentences <= 1
            and not shots
        )
    )
    mt = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    dense = (
        math.log1p(n_chars),
        math.log1p(n_words),
        prompt.context_chars / (prompt.context_chars + len(prompt.task)) if prompt.context_chars else 0.0,
        sum(map(count, _DIGITS)) / n,
        sum(map(count, _MATH)) / n,
        math.log1p(count("\n")),
        math.log1p(sum(map(count, _CODE_MARKERS)) + count("{")),
        math.log1p(len(_OPTION.findall(task))),
        math.log1p(count("?")),
        math.log1p(len(_NUMBER.findall(task))),
        math.log1p(len(_ENUM.findall(task))),
        math.log1p(sentences),
        sum(1 for w in words if len(w) >= 9) / n_words if n_words else 0.0,
        non_ascii,
        math.log1p(sum(1 for w in words if w in _CONSTRAINT_WORDS) + len(_CONSTRAINT_PHRASES.findall(head))),
        math.log1p(shots),
        math.log(max(1, prompt.turns)),
        math.log1p(prompt.system_chars),
        1.0 if mt else 0.0,
        math.log1p(mt),
        1.0 if has_tools else 0.0,
        1.0 if has_schema else 0.0,
        1.0 if reasoning else 0.0,
        1.0 if greeting else 0.0,
        1.0 if arithmetic else 0.0,
        1.0 if lookup else 0.0,
        1.0 if _kind(_REWRITE, head_terms, head) else 0.0,
        1.0 if _kind(_CREATIVE, head_terms, head) else 0.0,
        1.0 if code else 0.0,
        1.0 if not arithmetic and _kind(_MATH_TASK, terms, head) else 0.0,
        1.0 if _kind(_REASON, terms, head) else 0.0,
        1.0 if _kind(_EXPLAIN, head_terms, head) else 0.0,
        1.0 if trivial else 0.0,
    )
    return Features(terms, dense, n_chars)


_I_TRIVIAL, _I_OPTIONS = DENSE_NAMES.index("trivial"), DENSE_NAMES.index("options")
_I_HARD = tuple(DENSE_NAMES.index(n) for n in ("k_code", "k_math", "k_reasoning"))


def task_class(features: Features) -> str:
    """ "trivial", "hard" (code, maths, multi-step reasoning, a multiple-choice question) or "chat":
    the classes the energy service learns reasoning lengths for (energy/counterfactual.py)."""
    d = features.dense
    if d[_I_TRIVIAL]:
        return "trivial"
    if d[_I_OPTIONS] >= 1.3 or any(d[i] for i in _I_HARD):  # 1.3 ~ ln(1 + 3 option lines)
        return "hard"
    return "chat"


# --------------------------------------------------------------------------- reading requests


def prompt_of(messages: Iterable[Any] | None = None, prompt: Any = None) -> Prompt:
    """The :class:`Prompt` of a chat ``messages`` list, or else of a completion ``prompt``.

    Each message becomes ``"role: content"``, separated by blank lines. Content may be a
    string, a list of parts (text parts are kept, images and audio ignored) or None; a
    message's tool calls contribute their function names and arguments. A completion
    prompt may be a string or a list of strings; token-id prompts have no text.
    """
    if messages:
        chunks, task, turns, system, content = [], "", 0, 0, 0
        for msg in messages:
            if not isinstance(msg, Mapping):
                continue
            role = msg.get("role") or "user"
            body = _content_text(msg.get("content"))
            calls = msg.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping):
                    body += f"\n{fn.get('name') or ''}({fn.get('arguments') or ''})"
            chunks.append(f"{role}: {body}")
            content += len(body)
            if role == "user":
                task, turns = body, turns + 1
            elif role in ("system", "developer"):
                system += len(body)
        text = "\n\n".join(chunks)
        task = task or (chunks[-1] if chunks else "")
        return Prompt(text, task, max(1, turns), system, max(0, content - len(task)))
    if isinstance(prompt, str):
        return Prompt(prompt, prompt)
    if isinstance(prompt, list):
        text = "\n".join(p for p in prompt if isinstance(p, str))
        return Prompt(text, text)
    return Prompt("", "")


def prompt_text(messages: Iterable[Any] | None = None, prompt: Any = None) -> str:
    """The whole text of a chat ``messages`` list or a completion ``prompt`` (see :func:`prompt_of`)."""
    return prompt_of(messages, prompt).text


def request_text(body: Mapping[str, Any]) -> str:
    """The prompt text of an OpenAI chat or completion request body."""
    return prompt_text(body.get("messages"), body.get("prompt"))


def request_prompt(body: Mapping[str, Any]) -> Prompt:
    """The :class:`Prompt` of an OpenAI chat or completion request body."""
    return prompt_of(body.get("messages"), body.get("prompt"))


def from_request(body: Mapping[str, Any], *, reasoning: bool | None = None, prompt: Prompt | None = None) -> Features:
    """Features straight from an OpenAI request body.

    ``reasoning`` overrides what the body says (``reasoning_effort`` other than
    ``"none"``/``"minimal"``, or ``chat_template_kwargs.enable_thinking``/``thinking``).
    ``prompt`` is ``request_prompt(body)`` when the caller has it already.
    """
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if reasoning is None:
        effort = body.get("reasoning_effort")
        kwargs = body.get("chat_template_kwargs")
        kwargs = kwargs if isinstance(kwargs, Mapping) else {}
        reasoning = bool(
            (effort and effort not in ("none", "minimal")) or kwargs.get("enable_thinking") or kwargs.get("thinking")
        )
    return extract(
        request_prompt(body) if prompt is None else prompt,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        has_tools=bool(body.get("tools") or body.get("functions")),
        has_schema=_has_schema(body),
        reasoning=reasoning,
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
    return any(
        body.get(k) for k in ("guided_json", "guided_regex", "guided_grammar", "guided_choice", "structured_outputs")
    )
