"""vLLM's extensions of a chat response, read from the request: ``echo``, ``prompt_logprobs``,
``return_token_ids`` and ``return_tokens_as_token_ids`` (the completions handler reads its own,
``completions.py``).

- ``echo``: the content starts with the last message's content when that message has the
  response's role (``assistant`` unless ``add_generation_prompt`` is false: then the last
  message's own role), as ``serving_chat.py`` does; streamed as a content chunk after the role chunk.
- ``prompt_logprobs``: a list over the prompt tokens (``logprobs.prompt_logprobs``).
- ``return_token_ids``: ``prompt_token_ids`` on the response (on the first stream chunk) and
  ``token_ids`` on each choice (on each chunk: the ids of its tokens).
"""

from __future__ import annotations

from . import text
from .logprobs import prompt_logprobs
from .params import prompt_logprobs as read_prompt_logprobs
from .params import read_bool


class ChatExtras:
    __slots__ = ("echo", "add_generation_prompt", "n_prompt_logprobs", "token_ids", "as_ids", "_encoded")

    def __init__(self, body: dict, version, max_logprobs: int) -> None:
        self.echo = read_bool(body, "echo", False)
        self.add_generation_prompt = read_bool(body, "add_generation_prompt", True)
        self.n_prompt_logprobs = read_prompt_logprobs(body, version.at_least(0, 16), max_logprobs)
        self.token_ids = read_bool(body, "return_token_ids", False) and version.has_token_ids_fields
        self.as_ids = read_bool(body, "return_tokens_as_token_ids", False)
        self._encoded: tuple[list[int], list[str]] | None = None

    def _encode(self, prompt: str) -> tuple[list[int], list[str]]:
        if self._encoded is None:
            self._encoded = text.encode(prompt)
        return self._encoded

    def echo_text(self, body: dict, messages: list) -> str | None:
        """The text an echoed answer starts with, or None."""
        if not self.echo or not messages:
            return None
        last = messages[-1]
        role = "assistant" if self.add_generation_prompt else last.get("role")
        if last.get("role") != role or "content" not in last:
            return None
        return text.message_text(last.get("content")) or None

    def prompt_ids(self, prompt: str) -> list[int] | None:
        return self._encode(prompt)[0] if self.token_ids else None

    def prompt_logprobs(self, prompt: str) -> list | None:
        if self.n_prompt_logprobs is None:
            return None
        ids, pieces = self._encode(prompt)
        return prompt_logprobs(pieces, ids, self.n_prompt_logprobs, prompt)
