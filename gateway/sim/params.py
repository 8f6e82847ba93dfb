"""Request-parameter checks as vLLM makes them, and ``ApiError``, the error answer they raise.

Requests are validated by hand, with vLLM's status codes and messages (400 for validation with
FastAPI-style error lists as message, ``BadRequestError`` for sampling-parameter and context-length
errors, 404 for an unknown model); unknown fields are ignored. Here: the schema error, the field
readers and the sampling parameters; the checks that need the server's configuration (served model
name, context length, tool choice) run in ``generate.py``.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answer: status, message, vLLM error type, param."""

    def __init__(self, status: int, message: str, err_type: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def invalid(loc: str, msg: str, value, kind: str) -> ApiError:
    """A request-schema error, as vLLM reports FastAPI's RequestValidationError (400 "Bad Request")."""
    detail = {"type": kind, "loc": ("body", loc) if loc else ("body",), "msg": msg, "input": value}
    return ApiError(400, str([detail]), "Bad Request")


MAX_N_SEQUENCES = 16384  # VLLM_MAX_N_SEQUENCES' default
MAX_LOGPROBS = 20  # --max-logprobs' default
VOCAB_SIZE = 151_936  # what a logprobs count of -1 stands for
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1  # the seed is a torch.long


def vllm_error(
    new_style: bool, message: str, param: str | None, body, value=None, with_value: bool = False
) -> ApiError:
    """A ``VLLMValidationError`` raised by a request validator: from 0.16 (``new_style``) the
    message gets `` (parameter=…[, value=…])`` when it names one and ``param`` is set; before,
    FastAPI's error list with pydantic's ``Value error, …``."""
    if new_style:
        if param is None:
            return ApiError(400, message, "BadRequestError")
        suffix = f" (parameter={param}, value={value})" if with_value else f" (parameter={param})"
        return ApiError(400, message + suffix, "BadRequestError", param)
    return invalid("", "Value error, " + message, body, "value_error")


def _max_logprobs_check(count: int, new_style: bool, limit: int = MAX_LOGPROBS, kind: str = "sample") -> int:
    """The engine's cap (``_validate_logprobs``): more than ``--max-logprobs`` is a 400 (-1 is
    the whole vocabulary). Returns the count -1 stands for."""
    n = VOCAB_SIZE if count == -1 else count
    limit = VOCAB_SIZE if limit == -1 else limit
    if n > limit:
        message = f"Requested {kind} logprobs of {n}, which is greater than max allowed: {limit}"
        param = "logprobs" if kind == "sample" else "prompt_logprobs"
        if new_style:
            raise ApiError(400, f"{message} (parameter={param}, value={n})", "BadRequestError", param)
        raise ApiError(400, message, "BadRequestError")
    return n


def prompt_logprobs(body: dict, new_style: bool, limit: int = MAX_LOGPROBS) -> int | None:
    """``prompt_logprobs`` (alternatives per prompt token; -1: the vocabulary), checked as vLLM's
    ``check_logprobs`` and the engine's cap check it; None when not asked for."""
    count = read_int(body, "prompt_logprobs")
    if count is None:
        return None
    if body.get("stream") and (count > 0 or count == -1):
        raise vllm_error(new_style, "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs", body)
    if count < 0 and not (new_style and count == -1):
        message = "`prompt_logprobs` must be a positive value" + (" or -1." if new_style else ".")
        raise vllm_error(new_style, message, "prompt_logprobs", body, count, with_value=True)
    return _max_logprobs_check(count, new_style, limit, "prompt")


def chat_logprobs(body: dict, new_style: bool, limit: int = MAX_LOGPROBS) -> int | None:
    """``top_logprobs`` when the chat request asks for logprobs (``logprobs: true``), else None
    (-1, from 0.16: the whole vocabulary, when ``--max-logprobs`` allows it)."""
    top = read_int(body, "top_logprobs")
    wanted = read_bool(body, "logprobs", False)
    if top is not None:
        if top < 0 and not (new_style and top == -1):
            message = "`top_logprobs` must be a positive value" + (" or -1." if new_style else ".")
            raise vllm_error(new_style, message, "top_logprobs", body, top, with_value=True)
        if top != 0 and not wanted:
            message = "when using `top_logprobs`, `logprobs` must be set to true."
            raise vllm_error(new_style, message, "top_logprobs", body)
    if not wanted:
        return None
    return _max_logprobs_check(top or 0, new_style, limit)


def completion_logprobs(body: dict, new_style: bool, limit: int = MAX_LOGPROBS) -> int | None:
    """``logprobs`` (the number of alternatives) of a completions request, or None."""
    count = read_int(body, "logprobs")
    if count is None:
        return None
    if count < 0:
        raise vllm_error(new_style, "`logprobs` must be a positive value.", "logprobs", body, count, with_value=True)
    return _max_logprobs_check(count, new_style, limit)


# --- field readers (pydantic-like, lax: 16.0 is an int, as in pydantic's lax mode) -----------


def read_int(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None or (type(value) is int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise invalid(key, "Input should be a valid integer", value, "int_type")


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def is_true(value) -> bool:
    """Whether pydantic's lax mode reads ``value`` as True (no error for what it would refuse)."""
    if type(value) is bool:
        return value
    return (type(value) is int and value == 1) or (isinstance(value, str) and value.strip().lower() in _TRUE)


def read_bool(body: dict, key: str, default: bool) -> bool:
    """A boolean as pydantic's lax mode reads one: also 0/1 and strings such as "true" or "off"."""
    value = body.get(key, default)
    if value is None:
        return default
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise invalid(key, "Input should be a valid boolean, unable to interpret input", value, "bool_parsing")
    raise invalid(key, "Input should be a valid boolean", value, "bool_type")


def read_number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is bool or not isinstance(value, (int, float)):
        raise invalid(key, "Input should be a valid number", value, "float_type")
    return float(value)


def read_stop(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None or stop == []:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise invalid("stop", "Input should be a valid string or list of strings", stop, "string_type")


class Sampling:
    """The sampling parameters the simulator honours, validated like vLLM's SamplingParams."""

    __slots__ = (
        "max_tokens",
        "n",
        "stop",
        "seed",
        "min_tokens",
        "ignore_eos",
        "stream",
        "include_usage",
        "continuous_usage",
    )

    def __init__(self, body: dict, max_tokens_key: str | None, version=None, force_usage: bool = False) -> None:
        max_tokens = read_int(body, max_tokens_key) if max_tokens_key else None
        if max_tokens is None:
            max_tokens = read_int(body, "max_tokens")
        if max_tokens is not None and max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.")
        self.max_tokens = max_tokens
        n = read_int(body, "n")
        if n is not None and n < 1:
            raise ApiError(400, f"n must be at least 1, got {n}.")
        if n is not None and n > MAX_N_SEQUENCES:
            raise ApiError(
                400,
                f"n must be at most {MAX_N_SEQUENCES}, got {n}. To increase this limit, set the "
                "VLLM_MAX_N_SEQUENCES environment variable.",
            )
        self.n = n or 1
        temperature = read_number(body, "temperature")
        if temperature is not None and temperature < 0:
            raise ApiError(400, f"temperature must be non-negative, got {temperature}.")
        top_p = read_number(body, "top_p")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ApiError(400, f"top_p must be in (0, 1], got {top_p}.")
        self.min_tokens = read_int(body, "min_tokens") or 0
        if self.min_tokens < 0:
            raise ApiError(400, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise ApiError(
                400, f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {self.min_tokens}."
            )
        self.stop = read_stop(body)
        raw_seed = body.get("seed")
        self.seed = read_int(body, "seed")
        # a JSON integer past int64 arrives as a float when it is negative (orjson): out of range too
        lossy = isinstance(raw_seed, float) and abs(raw_seed) >= 2.0**63
        if self.seed is not None and (lossy or not LONG_MIN <= self.seed <= LONG_MAX):
            if self.seed > 0:
                message, kind = f"Input should be less than or equal to {LONG_MAX}", "less_than_equal"
            else:
                message, kind = f"Input should be greater than or equal to {LONG_MIN}", "greater_than_equal"
            raise invalid("seed", message, self.seed, kind)
        self.ignore_eos = read_bool(body, "ignore_eos", False)
        self.stream = read_bool(body, "stream", False)
        options = body.get("stream_options")
        if options is not None:
            if not isinstance(options, dict):
                raise invalid("stream_options", "Input should be a valid dictionary", options, "dict_type")
            if not self.stream and options:  # vLLM tests the object's truth: {} passes
                raise invalid(
                    "", "Value error, Stream options can only be defined when `stream=True`.", body, "value_error"
                )
            # StreamOptions.include_usage defaulted to True once the object was sent, so
            # ``stream_options: {}`` gave a usage chunk; from 0.18 (PR #36379) it gives none
            empty_means_usage = version is None or version.empty_stream_options_give_usage
            self.include_usage = self.stream and read_bool(options, "include_usage", empty_means_usage)
            self.continuous_usage = self.include_usage and read_bool(options, "continuous_usage_stats", False)
        else:
            self.include_usage = self.continuous_usage = False
        if force_usage and self.stream:  # --enable-force-include-usage: the final usage chunk always
            self.include_usage = True
