"""Deterministic tokenizer, chat template and answer text for the simulator.

Tokenizer: a regex splits text into BPE-like pieces (a word of up to 6 letters with its leading
space, up to 3 digits, one punctuation mark, a run of newlines, the chat template's special
tokens), about 4 characters per token on English text. Token ids are the real Qwen ids for the
special tokens and a CRC32 of the piece for the rest (ids seen are remembered for
``/detokenize``). ``/tokenize``, usage and the context-length check all count with it.

Chat template: ChatML as Qwen uses it (``<|im_start|>role\\ncontent<|im_end|>\\n``, then
``<|im_start|>assistant\\n``). With thinking switched off (Qwen3 ``enable_thinking: false``)
the template pre-fills an empty ``<think>\\n\\n</think>\\n\\n``; DeepSeek-R1 forces ``<think>\\n``.

Answers: text comes from two fixed corpora (an explanatory one for content, a "let me think"
one for reasoning), read from an offset picked by hashing the seed and the prompt, so the same
prompt gives the same text and length run to run. Lengths are log-normal: content median 420
tokens (ML.ENERGY chat answers average 400–700 tokens). Reasoning depends on what is asked
(``reasoning_kind``), from ML.ENERGY v3's measured output lengths: a hard problem (maths, a
proof, code, a multiple-choice exam question) thinks like a GPQA answer, median 7,000 tokens
(Qwen3 8B-32B with thinking: 7,000-8,300 output tokens per GPQA answer); ordinary chat median
600 (Nemotron-Nano-v2, which thinks by default, writes 1,080-1,340 tokens per lm-arena-chat answer
against ~640 for Qwen3-8B without thinking); small talk (six words or fewer, no digits) median
150 (no published figure: a quarter of chat); one-digit arithmetic in eight words or fewer ("What
is 1+1?") median 90 (no published figure: a small model settles it in a few sentences). A prompt
that asks for brevity ("concise", "brief",
"one sentence", …) gets a content length 0.3×.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import zlib
from functools import lru_cache

VOCAB_SIZE = 151_936
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<think>": 151667,
    "</think>": 151668,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
}
EOS = "<|im_end|>"

TOKEN_RE = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|</?think>|</?tool_call>"  # special tokens
    r"| ?[^\W\d_]{1,6}"  # a word piece with its leading space
    r"| ?\d{1,3}"  # numbers, up to three digits a token
    r"| ?[^\w\s]|_"  # punctuation
    r"|\n+"  # runs of newlines
    r"|[^\S\n]+"  # other whitespace
)

_id_to_piece: dict[int, str] = {v: k for k, v in SPECIAL_IDS.items()}
_MAX_REMEMBERED = 1_000_000


_piece_ids: dict[str, int] = {}


def token_id(piece: str) -> int:
    """The piece's id: its CRC32 (mod the regular vocabulary), or the next free id when another
    piece already has that one, so that ``decode`` gives every id back its own piece."""
    tid = SPECIAL_IDS.get(piece)
    if tid is None:
        tid = _piece_ids.get(piece)
        if tid is not None:
            return tid
        tid = zlib.crc32(piece.encode()) % 151_643
        if len(_id_to_piece) < _MAX_REMEMBERED:
            while _id_to_piece.get(tid, piece) != piece:
                tid = (tid + 1) % 151_643
            _id_to_piece[tid] = piece
            _piece_ids[piece] = tid
    return tid


def piece_of(tid: int) -> str:
    """The piece an id stands for ("" for an id no text produced)."""
    return _id_to_piece.get(tid, "")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


_count_cache: dict[str, int] = {}


def count_tokens(text: str) -> int:
    n = _count_cache.get(text)
    if n is None:
        n = len(TOKEN_RE.findall(text))
        if len(_count_cache) > 20_000:
            _count_cache.clear()
        _count_cache[text] = n
    return n


def encode(text: str) -> tuple[list[int], list[str]]:
    pieces = TOKEN_RE.findall(text)
    return [token_id(p) for p in pieces], pieces


def decode(ids: list[int]) -> str:
    return "".join(_id_to_piece.get(i, "") for i in ids)


# --- chat template --------------------------------------------------------------------------


class TemplateError(ValueError):
    pass


def message_text(content) -> str:
    """A message's content as the template sees it (text parts joined by newlines, as vLLM does)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise TemplateError("Each content part must be an object.")
            if part.get("type") == "text" or "text" in part:
                text = part.get("text")
                if not isinstance(text, str):
                    raise TemplateError("A text content part needs a string 'text'.")
                texts.append(text)
        return "\n".join(texts)
    raise TemplateError("Message content must be a string, a list of content parts or null.")


def render_chat(
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list | None = None,
    generation_prefix: str = "",
) -> str:
    """The prompt text the chat template produces (ChatML)."""
    parts = []
    first = 0
    if tools:  # Qwen's template: the tools join the system message (or make one)
        import orjson

        system = ""
        if messages and messages[0].get("role") == "system":
            system, first = message_text(messages[0].get("content")) + "\n\n", 1
        listed = "\n".join(orjson.dumps(t).decode() for t in tools)
        parts.append(f"<|im_start|>system\n{system}{_TOOLS_HEAD}<tools>\n{listed}\n</tools>{_TOOLS_TAIL}<|im_end|>\n")
    last = len(messages) - 1
    for i, m in enumerate(messages):
        if i < first:
            continue
        content = message_text(m.get("content"))
        parts.append(f"<|im_start|>{m['role']}\n{content}")
        calls = m.get("tool_calls")
        if calls and isinstance(calls, list):
            parts.append(_render_tool_calls(calls, bool(content)))
        if not (continue_final_message and i == last):
            parts.append("<|im_end|>\n")
    if add_generation_prompt and not continue_final_message:
        parts.append("<|im_start|>assistant\n" + generation_prefix)
    return "".join(parts)


_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
)
_TOOLS_TAIL = (
    "\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


def _render_tool_calls(calls: list, after_content: bool) -> str:
    """An assistant turn's tool calls as Qwen's template writes them (``<tool_call>`` JSON blocks)."""
    import orjson

    out = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise TemplateError("Each tool call must be an object.")
        function = call.get("function", call)
        if not isinstance(function, dict):
            raise TemplateError("A tool call's 'function' must be an object.")
        name = function.get("name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        if k or after_content:
            out.append("\n")
        out.append(f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>')
    return "".join(out)


# --- corpora --------------------------------------------------------------------------------

_CONTENT_SENTENCES = [
    "The short answer is that it depends on what you want to optimise for.",
    "Here is a clear way to think about it.",
    "First, consider the main constraint, which is usually time or memory.",
    "In practice, most teams start with the simplest option and measure before changing anything.",
    "For example, a cache in front of a slow service can cut latency by an order of magnitude.",
    "The trade-off is that the cached data can be stale for a few seconds.",
    "A second approach is to batch the work so that fixed costs are shared.",
    "This is exactly why GPUs are efficient at large batch sizes.",
    "If the input is small, the overhead dominates and the gains disappear.",
    "You can check this with a quick experiment: run it with 1, 8 and 64 items and compare.",
    "Keep in mind that results vary with hardware, drivers and configuration.",
    "To summarise, pick the approach that matches your workload and verify it with data.",
    "Another point worth mentioning is reliability.",
    "Retries help with transient failures, but they can also amplify load during an outage.",
    "A good rule is to retry only idempotent operations, with exponential backoff and jitter.",
    "Security matters too: never log secrets, and rotate keys on a schedule.",
    "In terms of cost, energy use grows with both model size and output length.",
    "Shorter answers and smaller models are often good enough for everyday questions.",
    "Let me give a concrete example with numbers.",
    "Suppose a request takes 200 milliseconds and the service handles 50 of them at once.",
    "Then the throughput is about 250 requests per second on that machine.",
    "Doubling the concurrency will not double the throughput once the device is saturated.",
    "Finally, document the decision so that the next person understands the reasoning.",
    "I hope this helps; let me know if you want more detail on any part.",
]
_REASONING_SENTENCES = [
    "Okay, let me think about what the user is really asking here.",
    "They want an answer, but the question has a few parts.",
    "First, I should recall the basic facts.",
    "Hmm, wait, that is not quite right; let me reconsider.",
    "Let me check this step by step.",
    "If the first assumption holds, then the second part follows directly.",
    "But what if the input is empty? That edge case matters.",
    "So the answer should cover both the common case and the edge case.",
    "Let me compute it: 12 times 7 is 84, and 84 plus 16 is 100.",
    "That matches what I expected, good.",
    "Alternatively, there might be a simpler way to see it.",
    "Actually, I think the simpler way is clearer for the user.",
    "Wait, I should double-check the units before answering.",
    "Yes, the units are consistent.",
    "Now, how should I structure the answer?",
    "Maybe start with the direct answer, then explain briefly.",
    "I also need to make sure I am not missing an important caveat.",
    "The user did not specify the context, so I will state my assumptions.",
    "Let me go over the reasoning once more to be sure.",
    "Okay, I think I have it now.",
]
_CONCISE_RE = re.compile(r"\b(concise(ly)?|brief(ly)?|short answer|be short|one (sentence|word|line)|terse)\b", re.I)


def _build_corpus(
    sentences: list[str], seed: int, n_sentences: int, paragraph_every: int
) -> tuple[list[str], list[int]]:
    """Pieces of a long text made of the sentences, and the piece index where each sentence starts."""
    rng = random.Random(seed)
    pieces: list[str] = []
    starts: list[int] = []
    for i in range(n_sentences):
        starts.append(len(pieces))
        pieces += tokenize(rng.choice(sentences))
        pieces.append("\n\n" if (i + 1) % paragraph_every == 0 else " ")
    return pieces, starts


CONTENT_CORPUS, _CONTENT_STARTS = _build_corpus(_CONTENT_SENTENCES, 1, 600, 5)
REASONING_CORPUS, _REASONING_STARTS = _build_corpus(_REASONING_SENTENCES, 2, 600, 7)


def _take(corpus: list[str], offset: int, n: int) -> list[str]:
    size = len(corpus)
    offset %= size
    if offset + n <= size:
        return corpus[offset : offset + n]
    out = corpus[offset:]
    n -= len(out)
    while n > 0:
        out += corpus[: min(n, size)]
        n -= size
    return out


# --- answer plans ---------------------------------------------------------------------------

SPECIAL, REASONING, CONTENT = 0, 1, 2

CONTENT_MEDIAN, CONTENT_SIGMA, CONTENT_RANGE = 420, 0.6, (8, 6000)
REASONING_MEDIAN = {"trivial": 90, "small_talk": 150, "chat": 600, "hard": 7000}  # by reasoning_kind (docstring)
_TRIVIAL_RE = re.compile(r"(?<![\d.])\d\s*[-+*/×]\s*\d(?![\d.])")  # one-digit arithmetic: "What is 1+1?"
REASONING_SIGMA, REASONING_RANGE = 0.7, (40, 30000)
_HARD_RE = re.compile(
    r"\b(?:prove|proof|derive|solve|integral|equation|theorem|lemma|step by step|algorithm|implement|function|"
    r"complexity|debug|compile|optimi[sz]e)\b|[=^∫∑√]|^\s*\(?[A-Ja-j][.)]\s",
    re.IGNORECASE | re.MULTILINE,
)
CONCISE_FACTOR = 0.3

# special tokens carry no text (``texts`` skips them); their pieces name them for logprobs
_THINK_OPEN, _THINK_CLOSE, _EOS = ["<think>"], ["</think>"], [EOS]
_NEWLINE, _BLANK_LINE = ["\n"], ["\n\n"]

# A segment is (kind, count, corpus, offset): ``count`` tokens read cyclically from ``corpus``.
Segment = tuple[int, int, list[str], int]


def _lognormal(median: float, sigma: float, u1: float, u2: float, lo: int, hi: int) -> int:
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return max(lo, min(hi, int(median * math.exp(sigma * z))))


class OutputPlan:
    """The tokens a request will generate: special, reasoning and content tokens, in order.

    ``total`` tokens are generated: ``finish_reason`` is ``stop`` when the natural answer (ending
    in EOS, or at a stop string) fits in ``max_tokens``, else ``length``. ``texts(i, j)`` gives
    the reasoning and content text of output tokens ``[i, j)`` as vLLM's reasoning parser splits
    them (special tokens carry no text); a reply of ``content_start`` tokens or fewer ended
    before the answer began.
    """

    __slots__ = ("segments", "total", "finish_reason", "stop_reason", "content_start", "_trim")

    def __init__(
        self,
        segments: list[Segment],
        max_tokens: int,
        *,
        stop: list[str] | None = None,
        min_tokens: int = 0,
        ignore_eos: bool = False,
    ) -> None:
        natural = sum(seg[1] for seg in segments)
        # content grows when EOS is ignored (never stops) or forbidden before min_tokens
        extra = max_tokens + 1 - natural if ignore_eos else min_tokens + 1 - natural
        if extra > 0:
            kind, count, corpus, offset = segments[-2]
            segments[-2] = (kind, count + extra, corpus, offset)
            natural += extra
        self.segments = segments
        # tokens before the answer proper (the think block): a reply cut off there has no content
        self.content_start = 0
        for kind, count, _, _ in segments:
            if kind == CONTENT:
                break
            self.content_start += count
        self.stop_reason: str | None = None
        self._trim: tuple[int, int, str] | None = None  # (segment, token, its text before the stop string)
        if stop:
            natural = self._apply_stop(stop, natural)
        self.total = min(natural, max_tokens)
        self.finish_reason = "stop" if natural <= max_tokens else "length"

    def _apply_stop(self, stop: list[str], natural: int) -> int:
        before = 0
        for index, (kind, count, corpus, offset) in enumerate(self.segments):
            if kind == CONTENT:
                pieces = _take(corpus, offset, count)
                text = "".join(pieces)
                hits = [(text.find(s), s) for s in stop if s and s in text]
                if hits:
                    pos, s = min(hits)
                    end_char = pos + len(s)
                    chars, holder, partial, n = 0, 0, "", 0
                    for n, piece in enumerate(pieces, 1):
                        if chars <= pos < chars + len(piece):
                            holder, partial = n - 1, text[chars:pos]
                        chars += len(piece)
                        if chars >= end_char:
                            break
                    self.segments = self.segments[:index] + [(CONTENT, n, corpus, offset)]
                    self._trim = (index, holder, partial)
                    self.stop_reason = s
                    return before + n
            before += count
        return natural

    def texts(self, i: int, j: int) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        start = 0
        for index, (kind, count, corpus, offset) in enumerate(self.segments):
            end = start + count
            if kind != SPECIAL and end > i and start < j:
                a, b = max(i, start) - start, min(j, end) - start
                trim = self._trim
                if trim is not None and trim[0] == index:
                    holder = trim[1]
                    text = "".join(_take(corpus, offset + a, max(0, min(b, holder) - a)))
                    if a <= holder < b:
                        text += trim[2]
                else:
                    text = "".join(_take(corpus, offset + a, b - a))
                (reasoning if kind == REASONING else content).append(text)
            start = end
            if start >= j:
                break
        return "".join(reasoning), "".join(content)

    def pieces(self, i: int, j: int) -> list[str]:
        """The token strings of output tokens ``[i, j)`` as sampled (special tokens by name, no
        stop-string trimming): what logprobs report."""
        out: list[str] = []
        start = 0
        for _, count, corpus, offset in self.segments:
            end = start + count
            if end > i and start < j:
                a, b = max(i, start) - start, min(j, end) - start
                out += _take(corpus, offset + a, b - a)
            start = end
            if start >= j:
                break
        return out

    def token_ids(self, i: int, j: int) -> list[int]:
        """The ids of output tokens ``[i, j)`` (``return_token_ids``)."""
        return [token_id(p) for p in self.pieces(i, j)]


def reasoning_kind(text: str) -> str:
    """How hard the simulator thinks a request is: "trivial", "small_talk", "chat" or "hard"."""
    words = len(text.split())
    if words <= 6 and not any(c.isdigit() for c in text):
        return "small_talk"
    if _HARD_RE.search(text):
        return "hard"
    return "trivial" if words <= 8 and _TRIVIAL_RE.search(text) else "chat"


@lru_cache(maxsize=16384)
def _shape(seed: int, request_seed: int | str | None, prompt: str, hint_text: str) -> tuple[int, int, int, int]:
    """(content tokens, content offset, reasoning tokens, reasoning offset) for a prompt."""
    digest = hashlib.blake2b(f"{seed}\x00{request_seed}\x00{prompt}".encode(), digest_size=16).digest()
    u = [(int.from_bytes(digest[k : k + 4], "little") + 0.5) / 2**32 for k in range(0, 16, 4)]
    content_n = _lognormal(CONTENT_MEDIAN, CONTENT_SIGMA, u[0], u[1], *CONTENT_RANGE)
    if hint_text and _CONCISE_RE.search(hint_text):
        content_n = max(CONTENT_RANGE[0], int(content_n * CONCISE_FACTOR))
    reasoning_n = _lognormal(REASONING_MEDIAN[reasoning_kind(hint_text)], REASONING_SIGMA, u[3], u[0], *REASONING_RANGE)
    return (
        content_n,
        _CONTENT_STARTS[int(u[2] * len(_CONTENT_STARTS))],
        reasoning_n,
        _REASONING_STARTS[int(u[3] * len(_REASONING_STARTS))],
    )


def content_sample(seed: int, request_seed: int | str | None, prompt: str, hint_text: str, limit: int) -> str:
    """Up to ``limit`` tokens of the answer text ``prompt`` would get, ending at a sentence if one fits."""
    content_n, offset, _, _ = _shape(seed, request_seed, prompt, hint_text)
    text = "".join(_take(CONTENT_CORPUS, offset, min(content_n, limit))).strip()
    cut = text.rfind(". ")
    return text[: cut + 1] if cut > 0 else text


def plan_answer(
    prompt: str,
    *,
    seed: int,
    request_seed: int | str | None = None,
    max_tokens: int,
    thinking: str | None = None,
    hint_text: str = "",
    stop: list[str] | None = None,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    answer: list[str] | None = None,
    blank_after_think: bool = True,
) -> OutputPlan:
    """Plan the answer to ``prompt`` (deterministic in ``seed``, ``request_seed`` and ``prompt``).

    ``thinking``: None (no reasoning); ``"qwen3"`` (generates ``<think>`` … ``</think>``);
    ``"deepseek_r1"`` (the template already opened ``<think>``: reasoning, then ``</think>``);
    ``"empty"`` (Qwen3's ``/no_think`` soft switch: an empty think block). ``hint_text`` is what
    the user and system said, scanned for requests to be brief. ``answer``: the pieces of a fixed
    answer (a tool call, a structured output) instead of the content corpus;
    ``blank_after_think=False`` drops the ``\n\n`` after ``</think>`` (a grammar starts the
    answer right after the think block).
    """
    content_n, content_offset, reasoning_n, reasoning_offset = _shape(seed, request_seed, prompt, hint_text)
    segments: list[Segment] = []
    if thinking in ("qwen3", "deepseek_r1"):
        if thinking == "qwen3":
            segments.append((SPECIAL, 1, _THINK_OPEN, 0))
        segments += [
            (REASONING, 1, _NEWLINE, 0),
            (REASONING, reasoning_n - 2, REASONING_CORPUS, reasoning_offset),
            (REASONING, 1, _NEWLINE, 0),
            (SPECIAL, 1, _THINK_CLOSE, 0),
        ]
        if blank_after_think:
            segments.append((CONTENT, 1, _BLANK_LINE, 0))
    elif thinking == "empty":
        segments += [
            (SPECIAL, 1, _THINK_OPEN, 0),
            (REASONING, 1, _BLANK_LINE, 0),
            (SPECIAL, 1, _THINK_CLOSE, 0),
        ]
        if blank_after_think:
            segments.append((CONTENT, 1, _BLANK_LINE, 0))
    if answer is not None:  # a fixed answer (a tool call, structured output): its own pieces
        segments.append((CONTENT, len(answer), answer, 0))
    else:
        segments.append((CONTENT, content_n, CONTENT_CORPUS, content_offset))
    segments.append((SPECIAL, 1, _EOS, 0))
    return OutputPlan(segments, max_tokens, stop=stop, min_tokens=min_tokens, ignore_eos=ignore_eos)


def embedding_vector(item: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``item``."""
    out: list[float] = []
    counter = 0
    while len(out) < dim:
        digest = hashlib.blake2b(f"{counter}\x00{item}".encode(), digest_size=64).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    out = out[:dim]
    norm = sum(x * x for x in out) ** 0.5 or 1.0
    return [x / norm for x in out]
