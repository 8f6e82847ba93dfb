"""Log-probabilities of the generated tokens, shaped as vLLM returns them.

The simulated model samples greedily: the sampled token is always the most likely one, so it
comes first in ``top_logprobs`` (vLLM lists the sampled token first, then the top-k) and the list
is sorted in descending order. Values are deterministic per request, choice and position: the
sampled token gets ``log p`` with ``p`` in [0.35, 0.999], the k-th alternative
``log((1 - p) * 0.9 / 2**k)`` (always below the sampled one, and the probabilities sum to less
than 1). Alternatives are common tokens other than the sampled one. Every generated token has an
entry, special tokens (``<think>``, ``</think>``, the EOS ``<|im_end|>``) by name; a streamed
event carries the entries of the tokens it covers (events vLLM skips, such as a lone
``<think>``, lose theirs, as in vLLM).

Chat (``logprobs: true``, ``top_logprobs: 0..20``): ``{"content": [{"token", "logprob", "bytes",
"top_logprobs": [{"token", "logprob", "bytes"}, …]}]}`` with ``top_logprobs`` entries per token.
Completions (``logprobs: N``): ``{"tokens", "token_logprobs", "top_logprobs": [{token:
logprob}], "text_offset"}`` with max(N, 1) entries per dict (vLLM keeps the sampled token plus
the top N, which coincide when the sampled token is the most likely).
"""

from __future__ import annotations

import hashlib
import math

from .text import OutputPlan, token_id

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default
_ALTERNATIVES = (
    " the", " a", " to", " and", " of", ",", ".", " is", " in", " that", " it", " for", "\n", " you", " this",
    " with", " be", " on", " can", " I", " we", " as", " are", " not", " or", " an", " at", " by", " but", ":",
    " more", " one", " so", " if", " all", " your", " from", " have", " will", " which",
)  # fmt: skip


_LN2 = math.log(2)


def _alternative(k: int, start: int) -> str:
    """The k-th alternative token (k from 0): common tokens first, then the rest of the
    vocabulary (which the simulator has no text for) by rank."""
    if k < len(_ALTERNATIVES):
        return _ALTERNATIVES[(start + k) % len(_ALTERNATIVES)]
    return f"<|vocab_{k}|>"


def _alternative_logprob(p: float, rank: int) -> float:
    """The logprob of the token at ``rank`` (1 is the sampled one, at ``log p``): halving for
    the first 40, then slowly decreasing (a whole-vocabulary list stays finite)."""
    return math.log((1 - p) * 0.9) - min(rank - 1, 40) * _LN2 - max(0, rank - 41) * 1e-4


def _show(token: str, as_ids: bool) -> str:
    return f"token_id:{token_id(token)}" if as_ids else token


class Logprobs:
    """The logprobs of one choice's output tokens (``as_ids``: vLLM's
    ``return_tokens_as_token_ids``, tokens written ``token_id:N``)."""

    __slots__ = ("plan", "top", "key", "as_ids")

    def __init__(self, plan: OutputPlan, top: int, key: str, as_ids: bool = False) -> None:
        self.plan = plan
        self.top = top
        self.key = key
        self.as_ids = as_ids

    def entries(self, i: int, j: int) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """(token, logprob, [(token, logprob) of the top list, sampled first]) for tokens ``[i, j)``."""
        out = []
        width = max(self.top, 1)
        for pos, token in enumerate(self.plan.pieces(i, j), i):
            digest = hashlib.blake2b(f"{self.key}\x00{pos}".encode(), digest_size=8).digest()
            p = 0.35 + 0.649 * int.from_bytes(digest[:4], "little") / 2**32
            lp = math.log(p)
            top = [(token, lp)]
            k, start = 0, digest[4]
            while len(top) < width:
                alt = _alternative(k, start)
                k += 1
                if alt != token:
                    top.append((alt, _alternative_logprob(p, len(top) + 1)))
            if self.as_ids:
                top = [(_show(t, True), v) for t, v in top]
                token = top[0][0]
            out.append((token, lp, top))
        return out

    def chat(self, i: int, j: int) -> dict:
        """``choices[].logprobs`` of a chat completion for tokens ``[i, j)``."""
        n = self.top
        return {
            "content": [
                {
                    "token": token,
                    "logprob": lp,
                    "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in top[:n]],
                }
                for token, lp, top in self.entries(i, j)
            ]
        }

    def completion(self, i: int, j: int, text_offset: int) -> dict:
        """``choices[].logprobs`` of a text completion for tokens ``[i, j)``; offsets start at ``text_offset``."""
        tokens, values, tops, offsets = [], [], [], []
        for token, lp, top in self.entries(i, j):
            tokens.append(token)
            values.append(lp)
            tops.append(dict(top))
            offsets.append(text_offset)
            text_offset += len(token)
        return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}


def _prompt_entries(pieces: list[str], ids: list[int], key: str):
    """(id, piece, logprob, rank, p) of each prompt token after the first, deterministic in ``key``:
    the prompt token is the most likely one at about half the positions, else ranked 2-20."""
    for pos in range(1, len(ids)):
        digest = hashlib.blake2b(f"{key}\x00p{pos}".encode(), digest_size=8).digest()
        p = 0.35 + 0.649 * int.from_bytes(digest[:4], "little") / 2**32
        rank = 1 if digest[5] < 128 else 2 + digest[5] % 19
        lp = math.log(p) if rank == 1 else _alternative_logprob(p, rank)
        yield pos, ids[pos], pieces[pos], lp, rank, p, digest[4]


def prompt_logprobs(pieces: list[str], ids: list[int], top: int, key: str) -> list:
    """vLLM's ``prompt_logprobs``: None for the first token, then per prompt token a dict
    ``{id: {"logprob", "rank", "decoded_token"}}`` holding the prompt token and the ``top`` most
    likely ones (so ``top`` entries when the prompt token is among them, else ``top`` + 1)."""
    out: list = [None] if ids else []
    for _, tid, piece, lp, rank, p, start in _prompt_entries(pieces, ids, key):
        entry = {str(tid): {"logprob": lp, "rank": rank, "decoded_token": piece}}
        k = r = 0
        while r < top:
            r += 1
            if r == rank:
                continue
            value = math.log(p) if r == 1 else _alternative_logprob(p, r)
            while True:  # the next alternative not already listed
                alt = _alternative(k, start)
                alt_id = token_id(alt) if k < len(_ALTERNATIVES) else k - len(_ALTERNATIVES)
                k += 1
                if str(alt_id) not in entry:
                    break
            shown = alt if k <= len(_ALTERNATIVES) else ""
            entry[str(alt_id)] = {"logprob": value, "rank": r, "decoded_token": shown}
        out.append(entry)
    return out


def echo_completion(pieces: list[str], ids: list[int], top: int, key: str, as_ids: bool) -> dict:
    """The prompt part of a completion's ``logprobs`` with ``echo``: the first token has no
    logprob (None), the others theirs and the ``top`` most likely tokens (``max(top, 1)``
    entries when the prompt token is among them, else ``top`` + 1)."""
    if not ids:
        return {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    tokens = [f"token_id:{ids[0]}" if as_ids else pieces[0]]
    values: list = [None]
    tops: list = [None]
    offsets, offset = [0], len(pieces[0])
    for _, tid, piece, lp, rank, p, start in _prompt_entries(pieces, ids, key):
        shown = f"token_id:{tid}" if as_ids else piece
        tokens.append(shown)
        values.append(lp)
        row = {shown: lp}
        target = top + 1 if rank > top else max(top, 1)
        k = 0
        while len(row) < target:
            alt = _alternative(k, start)
            k += 1
            if alt != piece:
                row.setdefault(_show(alt, as_ids), _alternative_logprob(p, len(row) + 1))
        tops.append(row)
        offsets.append(offset)
        offset += len(piece)
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}
