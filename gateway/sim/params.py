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


def _max_logprobs_check(count: int, new_style: bool) -> None:
    """The engine's cap (``_validate_logprobs``): more than ``--max-logprobs`` is a 400."""
    n = VOCAB_SIZE if count == -1 else count
    if n > MAX_LOGPROBS:
        message = f"Requested sample logprobs of {n}, which is greater than max allowed: {MAX_LOGPROBS}"
        if new_style:
            raise ApiError(400, f"{message} (parameter=logprobs, value={n})", "BadRequestError", "logprobs")
        raise ApiError(400, message, "BadRequestError")


def chat_logprobs(body: dict, new_style: bool) -> int | None:
    """``top_logprobs`` when the chat request asks for logprobs (``logprobs: true``), else None."""
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
    _max_logprobs_check(top or 0, new_style)
    return top or 0


def completion_logprobs(body: dict, new_style: bool) -> int | None:
    """``logprobs`` (the number of alternatives) of a completions request, or None."""
    count = read_int(body, "logprobs")
    if count is None:
        return None
    if count < 0:
        raise vllm_error(new_style, "`logprobs` must be a positive value.", "logprobs", body, count, with_value=True)
    _max_logprobs_check(count, new_style)
    return count


# --- field readers (pydantic-like, lax: 16.0 is an int, as in pydantic's lax mode) -----------


def read_int(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None or (type(value) is int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise invalid(key, "Input should be a valid integer", value, "int_type")


def read_bool(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if type(value) is not bool:
        raise invalid(key, "Input should be a valid boolean", value, "bool_type")
    return value


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

    def __init__(self, body: dict, max_tokens_key: str | None) -> None:
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
        self.seed = read_int(body, "seed")
        self.ignore_eos = read_bool(body, "ignore_eos", False)
        self.stream = read_bool(body, "stream", False)
        options = body.get("stream_options")
        if options is not None:
            if not isinstance(options, dict):
                raise invalid("stream_options", "Input should be a valid dictionary", options, "dict_type")
            if not self.stream:
                raise invalid(
                    "", "Value error, Stream options can only be defined when `stream=True`.", body, "value_error"
                )
            # vLLM's StreamOptions.include_usage defaults to True once the object is sent
            self.include_usage = read_bool(options, "include_usage", True)
            self.continuous_usage = self.include_usage and read_bool(options, "continuous_usage_stats", False)
        else:
            self.include_usage = self.continuous_usage = False
