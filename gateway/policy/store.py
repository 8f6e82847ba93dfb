"""The policy in force: loaded at start, hot-reloaded, handed out as immutable snapshots.

A request takes ``store.current`` (or ``for_request``) once, at admission, and keeps that
object for its whole life, so it is processed under one consistent policy version even if
the file changes meanwhile. A reload builds a complete new snapshot off the event loop and
swaps one reference: requests in flight are never touched, new ones get the new policy.

The watcher polls the file (stat, then a content hash when the stat changed or the file was
modified in the last couple of seconds, since coarse mtimes can hide a second write). An
invalid file is refused: the old policy stays, the problems are logged with line and column,
and ``gateway_policy_reloads_total{result="invalid"}`` counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gateway.policy.schema import SCHEMA_VERSION, Policy, PolicyFile, load_policy
from gateway.telemetry.metrics import Metrics
from gateway.yamlfile import YamlFileError, parse_yaml

log = logging.getLogger("gateway.policy")

# Re-hash a file modified this recently even when its stat looks unchanged.
_RECENT_S = 2.0


def default_policy_path() -> Path:
    """The shipped ``policies/default.yaml``.

    ``gateway/policy/default.yaml`` is a link to it in the repository, and a copy of it in
    an installed wheel, so the default policy travels with the package.
    """
    return Path(__file__).with_name("default.yaml")


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """One section merged over the default, with the lookups a request needs precomputed."""

    section: str
    version: str
    policy: Policy
    large_tiers: frozenset[str]
    aliases: Mapping[str, str]
    reasoning_keys: frozenset[str] | None
    reasoning_teams: frozenset[str] | None
    caps: Mapping[str, tuple[int, int | None]]  # tier -> (default max_tokens, max max_tokens); "" = any tier

    @classmethod
    def build(cls, section: str, version: str, policy: Policy) -> EffectivePolicy:
        r = policy.reasoning
        base_default, base_max = policy.caps.default_max_tokens, policy.caps.max_tokens
        caps = {"": (_clamp(base_default, base_max), base_max)}
        for tier, tc in policy.caps.tiers.items():
            mx = tc.max_tokens if tc.max_tokens is not None else base_max
            caps[tier] = (_clamp(tc.default_max_tokens or base_default, mx), mx)
        return cls(
            section=section,
            version=version,
            policy=policy,
            large_tiers=frozenset(policy.right_sizing.large_tiers),
            aliases=MappingProxyType(dict(policy.right_sizing.aliases)),
            reasoning_keys=None if r.allow_keys is None else frozenset(r.allow_keys),
            reasoning_teams=None if r.allow_teams is None else frozenset(r.allow_teams),
            caps=MappingProxyType(caps),
        )

    def reasoning_allowed(self, key_name: str | None, team: str) -> bool:
        """Whether this key/team may opt in (the header requirement is checked separately)."""
        if not self.policy.reasoning.allow:
            return False
        if self.reasoning_keys is None and self.reasoning_teams is None:
            return True
        return (key_name is not None and self.reasoning_keys is not None and key_name in self.reasoning_keys) or (
            self.reasoning_teams is not None and team in self.reasoning_teams
        )

    def max_tokens_caps(self, tier: str | None) -> tuple[int, int | None]:
        return self.caps.get(tier, self.caps[""]) if tier else self.caps[""]


def _clamp(default: int, maximum: int | None) -> int:
    return default if maximum is None else min(default, maximum)


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A whole policy file as loaded once; never changes after it is built."""

    version: str  # "<sha256[:12]>-v<schema>-<UTC load time>", e.g. "3fa2b9c01d2e-v1-20260101T120000Z"
    schema_version: int
    path: str
    sha256: str
    loaded_at: float
    file: PolicyFile
    policies: Mapping[str, EffectivePolicy]  # "default" and every section

    @property
    def sections(self) -> list[str]:
        return list(self.policies)

    def resolve(self, section: str | None, team: str) -> EffectivePolicy:
        """The key's section if it exists, else the team's, else default."""
        if section is not None:
            found = self.policies.get(section)
            if found is not None:
                return found
        return self.policies.get(team) or self.policies["default"]


def build_snapshot(path: str, text: str, loaded_at: float | None = None) -> PolicySnapshot:
    """Parse, validate and merge a policy file's text; raises YamlFileError with positions."""
    loaded = load_policy(parse_yaml(text, path))
    sha = hashlib.sha256(text.encode()).hexdigest()
    loaded_at = time.time() if loaded_at is None else loaded_at
    version = f"{sha[:12]}-v{SCHEMA_VERSION}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(loaded_at))}"
    policies = {name: EffectivePolicy.build(name, version, p) for name, p in loaded.policies.items()}
    return PolicySnapshot(
        version=version,
        schema_version=SCHEMA_VERSION,
        path=path,
        sha256=sha,
        loaded_at=loaded_at,
        file=loaded.file,
        policies=MappingProxyType(policies),
    )


class PolicyStore:
    def __init__(self, path: str | Path, metrics: Metrics, watch_interval_s: float = 1.0):
        self.path = str(path)
        self._metrics = metrics
        self.watch_interval_s = watch_interval_s
        self.last_error: str | None = None  # problems of the last refused change, if any
        self._task: asyncio.Task | None = None
        stat = self._stat()  # a missing or invalid file at start is an error
        text = self._read()
        self._current = build_snapshot(self.path, text)
        self._seen = (_signature(stat), self._current.sha256)
        metrics.policy_info.labels(version=self._current.version).set(1)
        log.info("policy %s loaded: version %s, sections %s", self.path, self._current.version, self._current.sections)

    @property
    def current(self) -> PolicySnapshot:
        return self._current

    def for_request(self, key_name: str | None, team: str, section: str | None) -> EffectivePolicy:
        """The effective policy for a request (precomputed per section at load: a dict lookup)."""
        return self._current.resolve(section, team)

    # ------------------------------------------------------------ watching

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="policy-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval_s)
            try:
                await self.poll()
            except Exception:  # the watcher must outlive any surprise
                log.exception("policy watcher: unexpected error")

    async def poll(self) -> str | None:
        """Check the file once: "ok" (new policy in force), "invalid" (refused) or None (unchanged)."""
        outcome = await asyncio.to_thread(self._check)
        if outcome is None:
            return None
        result, seen, payload = outcome
        self._seen = seen
        if result == "same":  # touched, or back to the policy in force after a refused edit
            if seen[1] == self._current.sha256:
                self.last_error = None
            return None
        if result == "ok":
            assert isinstance(payload, PolicySnapshot)
            old, self._current = self._current, payload
            self.last_error = None
            self._metrics.policy_info.remove(old.version)
            self._metrics.policy_info.labels(version=payload.version).set(1)
            log.info("policy %s reloaded: version %s (was %s)", self.path, payload.version, old.version)
        else:
            self.last_error = str(payload)
            log.error("policy %s: change refused, keeping version %s:\n%s", self.path, self._current.version, payload)
        self._metrics.policy_reloads.labels(result=result).inc()
        return result

    def _check(self) -> tuple[str, tuple, object] | None:
        """Runs in a worker thread: stat, hash and (if changed) parse. Only reads shared state."""
        try:
            stat = self._stat()
            sig = _signature(stat)
            if sig == self._seen[0] and time.time() - stat.st_mtime > _RECENT_S:
                return None
            text = self._read()
        except YamlFileError as exc:
            seen = ("missing", "")
            return None if self._seen == seen else ("invalid", seen, str(exc))
        sha = hashlib.sha256(text.encode()).hexdigest()
        if sha == self._seen[1]:
            return None if sig == self._seen[0] else ("same", (sig, sha), None)
        if sha == self._current.sha256:
            return "same", (sig, sha), None
        try:
            return "ok", (sig, sha), build_snapshot(self.path, text)
        except YamlFileError as exc:
            return "invalid", (sig, sha), str(exc)

    def _stat(self) -> os.stat_result:
        try:
            return os.stat(self.path)
        except OSError as exc:
            raise YamlFileError(self.path, [f"{self.path}: cannot read: {exc.strerror or exc}"]) from None

    def _read(self) -> str:
        try:
            return Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise YamlFileError(self.path, [f"{self.path}: cannot read: {exc}"]) from None


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
