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

from .text import OutputPlan

MAX_LOGPROBS = 20  # vLLM's --max-logprobs default
_ALTERNATIVES = (
    " the", " a", " to", " and", " of", ",", ".", " is", " in", " that", " it", " for", "\n", " you", " this",
    " with", " be", " on", " can", " I", " we", " as", " are", " not", " or", " an", " at", " by", " but", ":",
    " more", " one", " so", " if", " all", " your", " from", " have", " will", " which",
)  # fmt: skip


class Logprobs:
    """The logprobs of one choice's output tokens."""

    __slots__ = ("plan", "top", "key")

    def __init__(self, plan: OutputPlan, top: int, key: str) -> None:
        self.plan = plan
        self.top = top
        self.key = key

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
                alt = _ALTERNATIVES[(start + k) % len(_ALTERNATIVES)]
                k += 1
                if alt != token:
                    top.append((alt, math.log((1 - p) * 0.9 / 2 ** len(top))))
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
