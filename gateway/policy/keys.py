"""Who is calling: API keys to key name, team and policy section.

A client sends its key as ``Authorization: Bearer <key>`` (what the OpenAI SDK does) or as
``api-key: <key>`` (Azure-style clients). The gateway only ever holds SHA-256 hashes of keys
(``sha256:<hex>`` in the config); the key itself is hashed and dropped at once, never
logged, never echoed in an error, never stored on the request context.

Rules:
- No keys configured at all: the gateway is open and every request is anonymous (team
  ``default``); whatever key a client sends is ignored (SDKs insist on sending one, often
  ``EMPTY``), unless ``required: true`` which then refuses everything.
- ``required: true``: a missing or unknown key is a 401 in OpenAI's shape
  (``invalid_api_key``).
- ``required: false`` with keys configured: a request *without* a key is anonymous (team
  ``default``), but a request with an *unknown* key is a 401 too. A key is a claim of
  identity; silently serving a mistyped key as anonymous would apply the wrong policy and
  budgets and hide the mistake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from gateway.config import ApiKeyConfig, KeysConfig
from gateway.errors import GatewayError

ANONYMOUS_TEAM = "default"


@dataclass(frozen=True, slots=True)
class Identity:
    key_hash: str | None  # "sha256:<hex>", None for anonymous requests
    key_name: str | None  # the configured name (or None)
    team: str
    section: str | None  # the key's configured policy section, if any
    admin: bool = False  # may read every team's usage (GET /v1/usage)

    @property
    def label(self) -> str:
        """What metrics, budgets and logs call this caller: the key's name, never the key."""
        if self.key_name:
            return self.key_name
        return "anonymous" if self.key_hash is None else self.key_hash[:19]  # "sha256:" + 12 hex


def hash_key(api_key: str) -> str:
    """The form a key is configured in (``keys.keys[].hash``): ``sha256:<hex>``. Unsalted, so only
    for keys nobody can guess (``nudge-gateway hash-key --generate`` makes such keys)."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


ANONYMOUS = Identity(key_hash=None, key_name=None, team=ANONYMOUS_TEAM, section=None)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``authorization: Bearer …``, ``api-key`` (Azure's) or ``x-api-key`` (Anthropic's);
    headers have lower-case names."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("api-key") or headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class KeyRing:
    def __init__(self, config: KeysConfig):
        self.required = config.required
        self._by_hash: dict[str, Identity] = {}
        for k in config.keys:
            self._by_hash[k.hash] = _identity(k)

    def __len__(self) -> int:
        return len(self._by_hash)

    def by_hash(self, key_hash: str) -> Identity | None:
        """The configured key with this hash now (None: removed from the config)."""
        return self._by_hash.get(key_hash)

    def identities(self) -> list[Identity]:
        return list(self._by_hash.values())

    def caller(self, headers: MutableMapping[str, str]) -> Identity:
        """``authenticate``, then drop the key from ``headers``: it has done its job and must not
        reach anything that may log or forward the request."""
        ident = self.authenticate(headers)
        headers.pop("authorization", None)
        headers.pop("api-key", None)
        headers.pop("x-api-key", None)
        return ident

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity; raises GatewayError(401, code="invalid_api_key") when refused."""
        key = presented_key(headers)
        if not self._by_hash:
            if self.required:
                raise _unauthorized("This gateway requires an API key but none are configured.")
            return ANONYMOUS
        if key is None:
            if self.required:
                raise _unauthorized(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
                )
            return ANONYMOUS
        found = self._by_hash.get(hash_key(key))
        if found is None:
            # Never echo the key, not even masked: the message must be safe to log anywhere.
            raise _unauthorized("Incorrect API key provided.")
        return found


def _identity(k: ApiKeyConfig) -> Identity:
    return Identity(key_hash=k.hash, key_name=k.name, team=k.team, section=k.policy, admin=k.admin)


def _unauthorized(message: str) -> GatewayError:
    # OpenAI answers 401 with type invalid_request_error and code invalid_api_key.
    return GatewayError(
        401,
        message,
        code="invalid_api_key",
        type="invalid_request_error",
        headers={"www-authenticate": 'Bearer realm="nudge-gateway"'},
    )
