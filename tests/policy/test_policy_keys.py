"""API keys: hashes only, 401 in OpenAI's shape, anonymous when allowed, never logged."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway.config import ApiKeyConfig, KeysConfig
from gateway.errors import GatewayError
from gateway.policy.keys import KeyRing, hash_key, presented_key

SECRET = "sk-live-4f9a1c2b7e"
OTHER = "sk-other-0000"


def ring(required: bool, *keys: tuple[str, str, str, str | None]) -> KeyRing:
    return KeyRing(
        KeysConfig(
            required=required,
            keys=[ApiKeyConfig(hash=hash_key(k), name=n, team=t, policy=p) for k, n, t, p in keys],
        )
    )


def test_hash_format():
    assert hash_key("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    "headers, key",
    [
        ({"authorization": f"Bearer {SECRET}"}, SECRET),
        ({"authorization": f"bearer   {SECRET} "}, SECRET),
        ({"api-key": SECRET}, SECRET),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_known_key_gives_name_team_and_section():
    r = ring(True, (SECRET, "alice", "physics", "strict"))
    ident = r.authenticate({"authorization": f"Bearer {SECRET}"})
    assert (ident.key_name, ident.team, ident.section) == ("alice", "physics", "strict")
    assert ident.key_hash == hash_key(SECRET) and ident.label == "alice"


def assert_401(exc: GatewayError) -> dict:
    assert exc.status == 401
    body = orjson.loads(exc.encode())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    assert SECRET not in exc.encode().decode() and OTHER not in exc.encode().decode()
    return body


def test_required_refuses_missing_and_unknown_keys():
    r = ring(True, (SECRET, "alice", "physics", None))
    with pytest.raises(GatewayError) as missing:
        r.authenticate({})
    assert "didn't provide an API key" in assert_401(missing.value)["error"]["message"]
    with pytest.raises(GatewayError) as unknown:
        r.authenticate({"authorization": f"Bearer {OTHER}"})
    assert assert_401(unknown.value)["error"]["message"] == "Incorrect API key provided."


def test_not_required_allows_anonymous_but_not_unknown_keys():
    r = ring(False, (SECRET, "alice", "physics", None))
    anon = r.authenticate({})
    assert (anon.key_hash, anon.key_name, anon.team, anon.label) == (None, None, "default", "anonymous")
    with pytest.raises(GatewayError) as unknown:
        r.authenticate({"api-key": OTHER})
    assert_401(unknown.value)


def test_open_gateway_ignores_placeholder_keys():
    r = ring(False)
    assert r.authenticate({"authorization": "Bearer EMPTY"}).team == "default"
    with pytest.raises(GatewayError):
        ring(True).authenticate({"authorization": "Bearer EMPTY"})


def test_unnamed_key_label_is_a_hash_prefix():
    ident = ring(True, (SECRET, None, "t", None)).authenticate({"authorization": f"Bearer {SECRET}"})
    assert ident.label == hash_key(SECRET)[:19] and SECRET not in ident.label


def test_keys_never_reach_logs(caplog):
    r = ring(True, (SECRET, "alice", "physics", None))
    with caplog.at_level(logging.DEBUG):
        r.authenticate({"authorization": f"Bearer {SECRET}"})
        for headers in ({"authorization": f"Bearer {OTHER}"}, {}):
            with pytest.raises(GatewayError) as info:
                r.authenticate(headers)
            logging.getLogger("test").error("refused: %s", info.value)
    assert SECRET not in caplog.text and OTHER not in caplog.text
    assert "refused: Incorrect API key provided." in caplog.text


@pytest.mark.parametrize("name", ["authorization", "api-key"])
def test_the_caller_s_key_is_dropped_from_the_headers_once_checked(name):
    r = ring(True, (SECRET, "alice", "physics", None))
    headers = {name: f"Bearer {SECRET}" if name == "authorization" else SECRET, "x-other": "1"}
    assert r.caller(headers).key_name == "alice"
    assert headers == {"x-other": "1"}
    refused = {"authorization": "Bearer sk-nope"}
    with pytest.raises(GatewayError):
        r.caller(refused)
