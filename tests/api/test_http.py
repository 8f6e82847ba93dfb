"""The HTTP application (api/http.py: ``application``): Starlette's router and CORS middleware in
front of the gateway's handlers, with errors in OpenAI's shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.api.http import application


async def echo(request) -> None:
    await request.json(200, {"method": request.method, "path": request.path, "params": request.path_params})


PATHS = {
    "/v1/chat/completions": {"POST": echo},
    "/v1/models": {"GET": echo},
    "/v1/files/{file_id}": {"GET": echo, "DELETE": echo},
}


def call(app, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, headers=headers or {})

    return asyncio.run(go())


def openai_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code


def test_paths_methods_and_parameters():
    app = application(PATHS, [])
    assert call(app, "POST", "/v1/chat/completions").json()["method"] == "POST"
    assert call(app, "GET", "/v1/files/file-abc").json()["params"] == {"file_id": "file-abc"}
    assert call(app, "DELETE", "/v1/files/file-abc").json()["method"] == "DELETE"
    head = call(app, "HEAD", "/v1/models")  # a GET handler answers HEAD
    assert head.status_code == 200 and head.content == b""


def test_unknown_paths_and_methods_are_openai_errors():
    app = application(PATHS, [])
    openai_error(call(app, "GET", "/v1/responses"), 404, "unknown_url")
    r = call(app, "GET", "/v1/chat/completions")
    openai_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert call(app, "PUT", "/v1/files/x").headers["allow"] == "DELETE, GET, HEAD"


def test_a_trailing_slash_is_redirected_as_vllm_does():
    r = call(application(PATHS, []), "POST", "/v1/chat/completions/")
    assert r.status_code == 307  # method and body kept by the client that follows it
    assert r.headers["location"] == "http://gw/v1/chat/completions"


@pytest.mark.parametrize("origins", [["*"], ["https://app.example"]])
def test_cors_preflight_and_exposed_headers(origins):
    app = application(PATHS, origins)
    origin = "https://app.example"
    pre = call(app, "OPTIONS", "/v1/chat/completions", {
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    })  # fmt: skip
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] in ("*", origin)
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in pre.headers  # keys travel in headers, never cookies
    r = call(app, "POST", "/v1/chat/completions", {"origin": origin})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", origin)
    exposed = r.headers["access-control-expose-headers"].lower()
    for name in ("x-request-id", "x-gateway-energy-j", "x-gateway-routed-model", "x-gateway-nudge", "retry-after"):
        assert name in exposed
    plain = call(app, "POST", "/v1/chat/completions")  # an API client (no Origin): nothing added
    assert plain.status_code == 200 and not any(h.startswith("access-control-") for h in plain.headers)


def test_cors_refuses_other_origins_and_can_be_off():
    pre = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    r = call(application(PATHS, ["https://app.example"]), "OPTIONS", "/v1/chat/completions", pre)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = call(application(PATHS, ["https://app.example"]), "POST", "/v1/chat/completions", {"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser hides it
    off = call(application(PATHS, []), "OPTIONS", "/v1/chat/completions", pre)  # CORS off: no preflight answers
    openai_error(off, 405, "method_not_allowed")
