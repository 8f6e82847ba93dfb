"""PolicyStore: load, resolve sections, hot reload (valid, invalid, in flight)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from gateway.policy.store import PolicyStore, default_policy_path
from gateway.telemetry.metrics import Metrics
from gateway.yamlfile import YamlFileError

BASE = """version: 1
default:
  reasoning: {max_tokens: %d}
sections:
  lab:
    reasoning: {allow_teams: [lab]}
"""


def write(path, text: str) -> None:
    # Write to a temp file and rename, like editors and config management do.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def reloads(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("gateway_policy_reloads_total", {"result": result}) or 0.0


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BASE % 1000)
    return path


def test_loads_and_resolves_sections(policy_file):
    m = Metrics()
    store = PolicyStore(policy_file, m)
    snap = store.current
    assert snap.sections == ["default", "lab"]
    assert snap.version.startswith(snap.sha256[:12] + "-v1-")
    assert m.registry.get_sample_value("gateway_policy_info", {"version": snap.version}) == 1
    # the key's section, else the team's, else default
    assert store.for_request("k", "other", "lab").section == "lab"
    assert store.for_request("k", "lab", None).section == "lab"
    assert store.for_request("k", "other", "missing").section == "default"
    assert store.for_request(None, "default", None).section == "default"
    # resolution is a lookup of precomputed objects, the same each time
    assert store.for_request("k", "lab", None) is store.for_request("j", "lab", None)


def test_invalid_or_missing_file_at_start_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefault:\n  reasoning: {max_tokens: zero}\n")
    with pytest.raises(YamlFileError) as info:
        PolicyStore(bad, Metrics())
    assert f"{bad}:3:15: default.reasoning.max_tokens" in str(info.value)
    with pytest.raises(YamlFileError):
        PolicyStore(tmp_path / "nope.yaml", Metrics())


def test_shipped_default_path_exists():
    assert default_policy_path().is_file()
    PolicyStore(default_policy_path(), Metrics())


async def test_valid_change_applies_to_new_requests_only(policy_file):
    m = Metrics()
    store = PolicyStore(policy_file, m)
    in_flight = store.for_request(None, "default", None)  # a request admitted before the change
    old_version = store.current.version
    write(policy_file, BASE % 2000)
    assert await store.poll() == "ok"
    new = store.for_request(None, "default", None)
    assert new.policy.reasoning.max_tokens == 2000 and new.version != old_version
    # the request in flight still sees its whole, unchanged policy
    assert in_flight.policy.reasoning.max_tokens == 1000 and in_flight.version == old_version
    assert reloads(m, "ok") == 1
    assert m.registry.get_sample_value("gateway_policy_info", {"version": old_version}) is None
    assert m.registry.get_sample_value("gateway_policy_info", {"version": new.version}) == 1
    assert await store.poll() is None  # nothing changed since


async def test_invalid_change_is_refused_logged_and_counted(policy_file, caplog):
    m = Metrics()
    store = PolicyStore(policy_file, m)
    before = store.current
    write(policy_file, "version: 1\ndefault:\n  reasoning:\n    max_tokens: -1\n")
    with caplog.at_level(logging.ERROR, logger="gateway.policy"):
        assert await store.poll() == "invalid"
    assert store.current is before
    assert reloads(m, "invalid") == 1
    assert f"{policy_file}:4:5: default.reasoning.max_tokens: Input should be greater than 0" in caplog.text
    assert store.last_error and ":4:5:" in store.last_error
    assert await store.poll() is None  # refused once, not every poll
    assert reloads(m, "invalid") == 1
    write(policy_file, BASE % 3000)  # fixed: applies
    assert await store.poll() == "ok"
    assert store.current.policies["default"].policy.reasoning.max_tokens == 3000
    assert store.last_error is None


async def test_touch_and_revert_do_not_reload(policy_file):
    m = Metrics()
    store = PolicyStore(policy_file, m)
    version = store.current.version
    os.utime(policy_file, None)
    assert await store.poll() is None
    write(policy_file, "version: 1\ndefault: {caps: {max_tokens: oops}}\n")
    assert await store.poll() == "invalid"
    write(policy_file, BASE % 1000)  # back to the content in force
    assert await store.poll() is None
    assert store.current.version == version and store.last_error is None
    assert reloads(m, "ok") == 0


async def test_deleted_file_keeps_the_policy(policy_file):
    m = Metrics()
    store = PolicyStore(policy_file, m)
    policy_file.unlink()
    assert await store.poll() == "invalid"
    assert await store.poll() is None
    assert store.current.policies["default"].policy.reasoning.max_tokens == 1000
    write(policy_file, BASE % 4000)
    assert await store.poll() == "ok"


async def test_same_size_rewrite_in_the_same_mtime_tick_is_seen(policy_file):
    store = PolicyStore(policy_file, Metrics())
    st = os.stat(policy_file)
    policy_file.write_text(BASE % 1001)  # same length as 1000
    os.utime(policy_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert await store.poll() == "ok"
    assert store.current.policies["default"].policy.reasoning.max_tokens == 1001


async def test_watcher_reloads_under_load_without_failing_a_request(policy_file):
    """Requests keep one version for their whole life while the file changes under them."""
    m = Metrics()
    store = PolicyStore(policy_file, m, watch_interval_s=0.02)
    await store.start()
    seen_versions: set[str] = set()
    failures: list[BaseException] = []
    stop = time.monotonic() + 1.5

    async def client():
        while time.monotonic() < stop:
            try:
                pol = store.for_request(None, "default", None)
                version, max_tokens = pol.version, pol.policy.reasoning.max_tokens
                await asyncio.sleep(0.005)  # the request is in flight
                assert pol.version == version and pol.policy.reasoning.max_tokens == max_tokens
                seen_versions.add(version)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

    async def editor():
        for i in range(8):
            await asyncio.sleep(0.12)
            if i % 3 == 2:
                write(policy_file, "version: 1\ndefault: {caps: {n_max: 0}}\n")  # invalid
            else:
                write(policy_file, BASE % (1100 + i))

    await asyncio.gather(editor(), *(client() for _ in range(20)))
    await store.stop()
    assert not failures
    assert len(seen_versions) >= 3
    assert reloads(m, "ok") >= 3 and reloads(m, "invalid") >= 1
