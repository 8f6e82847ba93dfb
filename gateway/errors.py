"""One error shape for everything the gateway refuses: OpenAI's.

``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``

Any stage raises ``GatewayError``; the HTTP surface turns it into a response. vLLM's own
error bodies (flat before v0.10.1, an int ``code`` after) are normalised by ``normalise``.
"""

from __future__ import annotations

from typing import Any

import orjson

# OpenAI's error ``type`` for each status the gateway produces.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encode(self) -> bytes:
        return orjson.dumps(self.body())


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


# vLLM's Python-ish type names and the OpenAI code they map to.
_VLLM_CODES = {404: "model_not_found"}


def normalise(status: int, payload: Any) -> dict[str, Any]:
    """Turn any upstream error body (vLLM nested, vLLM flat, plain text) into OpenAI's shape."""
    err: Any = payload
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
    elif isinstance(payload, dict) and isinstance(payload.get("error"), str):
        err = {"message": payload["error"]}  # vLLM's api-key middleware: {"error": "Unauthorized"}
    if not isinstance(err, dict):
        err = {"message": str(payload) if payload else f"upstream returned HTTP {status}"}
    message = str(err.get("message") or f"upstream returned HTTP {status}")
    code = err.get("code")
    if not isinstance(code, str):
        code = _VLLM_CODES.get(status)
        if status == 400 and "context length" in message.lower():
            code = "context_length_exceeded"
    etype = err.get("type")
    if not isinstance(etype, str) or etype.endswith("Error") and "_" not in etype:
        etype = error_type(status)  # vLLM's "BadRequestError" -> OpenAI's "invalid_request_error"
    param = err.get("param")
    return {
        "error": {"message": message, "type": etype, "param": param if isinstance(param, str) else None, "code": code}
    }
