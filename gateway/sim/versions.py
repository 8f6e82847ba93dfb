"""What differs between vLLM releases, in one place (``--vllm-version``).

Sources: /work/shared/reference/vllm-api.md and the vLLM code it cites.

- Error bodies: flat ``{"object":"error",...}`` up to 0.10.0, nested ``{"error":{...}}`` from
  0.10.1 (PR #22099); ``code`` is the integer HTTP status either way.
- Reasoning text field: ``reasoning_content`` up to 0.11.0; ``reasoning`` and
  ``reasoning_content`` from 0.11.1 (PR #27752); ``reasoning`` only from 0.16 (PR #33402).
- ``reasoning_effort``: low|medium|high before 0.20; none|minimal|low|medium|high|xhigh|max from
  0.20 (PR #40982), where ``none`` also sets ``enable_thinking=False`` unless the request set it.
- Context-length messages: three generations (≤0.10.0, 0.10.1–0.15, ≥0.16).
- ``include_reasoning: false`` hides streamed reasoning only from 0.16 (the non-streaming
  message honours it in every version).
- Metrics: ``vllm:inter_token_latency_seconds`` from 0.11 (``time_per_output_token_seconds``
  until 0.11, removed after), ``vllm:gpu_cache_usage_perc`` until 0.11.
- Routes: ``/v1/responses`` from 0.10.1; ``/v1/messages`` (Anthropic) from 0.11 (a best guess at
  the release that shipped it). Before, they are unknown routes (404).
"""

from __future__ import annotations

import json
from functools import cached_property

OLD_EFFORTS = frozenset({"low", "medium", "high"})
NEW_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})

STATUS_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}


def parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.strip().lstrip("v").split(".")[:3]]
    if not parts or len(parts) < 2:
        raise ValueError(f"bad vLLM version {text!r}: expected MAJOR.MINOR[.PATCH]")
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


class VllmVersion:
    def __init__(self, text: str) -> None:
        self.tuple = parse_version(text)
        self.text = ".".join(map(str, self.tuple))

    def at_least(self, *version: int) -> bool:
        return self.tuple >= tuple(version) + (0,) * (3 - len(version))

    # --- errors -------------------------------------------------------------------------------
    @cached_property
    def nested_errors(self) -> bool:
        return self.at_least(0, 10, 1)

    def error_body(self, message: str, status: int, err_type: str | None = None, param: str | None = None) -> dict:
        err_type = err_type or STATUS_TYPES.get(status, "BadRequestError")
        if self.nested_errors:
            return {"error": {"message": message, "type": err_type, "param": param, "code": status}}
        return {"object": "error", "message": message, "type": err_type, "param": param, "code": status}

    def stream_error_event(self, message: str, status: int = 400, err_type: str = "BadRequestError") -> bytes:
        """A mid-stream error event, written with ``json.dumps`` as vLLM does (note the spaces)."""
        body = self.error_body(message, status, err_type)
        inner = body["error"] if self.nested_errors else body
        return f"data: {json.dumps({'error': inner})}\n\n".encode()

    def context_length_error(
        self, prompt_tokens: int, max_tokens: int | None, max_model_len: int
    ) -> tuple[str, str | None]:
        """``(message, param)`` for a request that does not fit the context window."""
        n = max_model_len
        if not self.nested_errors:
            completion = max_tokens or 0
            return (
                f"This model's maximum context length is {n} tokens. However, you requested "
                f"{prompt_tokens + completion} tokens ({prompt_tokens} in the messages, {completion} in the "
                "completion). Please reduce the length of the messages or completion.",
                None,
            )
        if max_tokens is None or prompt_tokens >= n:
            if self.at_least(0, 16):
                return f"Input length ({prompt_tokens}) exceeds model's maximum context length ({n}).", "input_tokens"
            return (
                f"This model's maximum context length is {n} tokens. However, your request has {prompt_tokens} "
                "input tokens. Please reduce the length of the input messages.",
                "input_tokens",
            )
        message = (
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum context "
            f"length is {n} tokens and your request has {prompt_tokens} input tokens "
            f"({max_tokens} > {n} - {prompt_tokens})."
        )
        if self.at_least(0, 16):
            message += f" (parameter=max_tokens, value={max_tokens})"
        return message, "max_tokens"

    # --- reasoning ----------------------------------------------------------------------------
    @cached_property
    def reasoning_fields(self) -> tuple[str, ...]:
        if self.at_least(0, 16):
            return ("reasoning",)
        if self.at_least(0, 11, 1):
            return ("reasoning", "reasoning_content")
        return ("reasoning_content",)

    @cached_property
    def reasoning_efforts(self) -> frozenset[str]:
        return NEW_EFFORTS if self.at_least(0, 20) else OLD_EFFORTS

    @cached_property
    def effort_none_disables_thinking(self) -> bool:
        return self.at_least(0, 20)

    @cached_property
    def hides_streamed_reasoning(self) -> bool:
        return self.at_least(0, 16)

    # --- response extras ----------------------------------------------------------------------
    @cached_property
    def has_token_ids_fields(self) -> bool:
        return self.at_least(0, 11)

    # --- routes -------------------------------------------------------------------------------
    @cached_property
    def has_responses_api(self) -> bool:
        return self.at_least(0, 10, 1)

    @cached_property
    def has_messages_api(self) -> bool:
        """Best guess: vLLM's Anthropic ``/v1/messages`` endpoint is taken to exist from 0.11."""
        return self.at_least(0, 11)

    # --- usage --------------------------------------------------------------------------------
    @cached_property
    def empty_stream_options_give_usage(self) -> bool:
        """``stream_options: {}`` meant include_usage=True until PR #36379 (merged 2026-03-12, 0.18)."""
        return not self.at_least(0, 18)

    # --- metrics ------------------------------------------------------------------------------
    @cached_property
    def has_inter_token_latency_metric(self) -> bool:
        return self.at_least(0, 11)

    @cached_property
    def has_time_per_output_token_metric(self) -> bool:
        return not self.at_least(0, 12)

    @cached_property
    def has_gpu_cache_usage_metric(self) -> bool:
        return not self.at_least(0, 12)

    def shows_hidden_metrics(self, requested: str | None) -> bool:
        """``--show-hidden-metrics-for-version X.Y``: vLLM shows the metrics it hid in this release
        only when X.Y is the previous minor release (``_prev_minor_version_was``)."""
        if not requested:
            return False
        major, minor, _ = self.tuple
        try:
            asked = parse_version(requested)
        except ValueError:
            return False
        return minor > 0 and asked[:2] == (major, minor - 1)

    @cached_property
    def has_waiting_by_reason_metric(self) -> bool:
        return self.at_least(0, 12)
