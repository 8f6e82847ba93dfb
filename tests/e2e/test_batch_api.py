"""OpenAI's Batch API through the gateway, with the openai SDK's ``files`` and ``batches``
resources unchanged: upload, create, poll, read the output; validation, cancel, who sees what,
and interactive requests going first."""

from __future__ import annotations

import io

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from gateway.policy.keys import hash_key
from tests.support import MEDIUM, InProcessGateway, backend_entry, base_config, wait_until, write_config

ALICE, BOB, ROOT = "sk-batch-alice", "sk-batch-bob", "sk-batch-root"


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_line(i: int, **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "auto", "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
                     "max_tokens": 16, **body}}  # fmt: skip


@pytest.fixture(scope="module")
def gw(sims, tmp_path_factory):
    from gateway.config import load_config

    tmp = tmp_path_factory.mktemp("batch")
    keys = [{"name": "alice", "team": "nlp", "hash": hash_key(ALICE)},
            {"name": "bob", "team": "vision", "hash": hash_key(BOB)},
            {"name": "root", "team": "ops", "hash": hash_key(ROOT), "admin": True}]  # fmt: skip
    config = base_config(tmp, [backend_entry("medium", sims[MEDIUM])], keys={"required": True, "keys": keys},
                         batch={"poll_interval_s": 0.2})  # fmt: skip
    with InProcessGateway(load_config(write_config(tmp, config))) as gateway:
        wait_until(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 200, 10, what="backend discovered")
        yield gateway


def client(gw, key: str = ALICE) -> OpenAI:
    return OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def finished(c: OpenAI, batch_id: str, timeout: float = 60.0):
    return wait_until(lambda: (b := c.batches.retrieve(batch_id)).status in ("completed", "failed", "cancelled",
                                                                             "expired") and b, timeout,
                      what=f"batch {batch_id} to end")  # fmt: skip


def test_the_sdk_round_trip_answers_every_line_with_its_energy(gw, monkeypatch):
    from gateway.telemetry.ledger import jobs

    monkeypatch.setattr(jobs, "RESULT_PAGE", 4)  # the output file goes out in pages of 4 lines
    c = client(gw)
    upload = c.files.create(file=("in.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(6)]))), purpose="batch")
    assert upload.object == "file" and upload.purpose == "batch" and upload.bytes > 0
    assert c.files.retrieve(upload.id).filename == "in.jsonl"
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"job": "colours"})  # fmt: skip
    assert batch.status == "in_progress" and batch.request_counts.total == 6 and batch.metadata == {"job": "colours"}

    done = finished(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 6 and done.request_counts.failed == 0
    assert done.output_file_id and done.error_file_id is None and done.completed_at >= done.created_at
    content = c.files.content(done.output_file_id).content
    assert len(content) == c.files.retrieve(done.output_file_id).bytes  # two pages, sized when it was made
    lines = [orjson.loads(line) for line in content.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"req-{i}" for i in range(6)]
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["energy"]["joules"] > 0
        assert line["response"]["request_id"]
    # the batch's own totals: tokens and energy from the ledger's rows of its requests (written by
    # the ledger's thread a moment after each answer: all of them soon after the batch ends)
    generated = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines)
    totalled = wait_until(lambda: (b := c.batches.retrieve(batch.id)).usage is not None
                          and b.usage.output_tokens == generated and b, 10, what="the batch's usage")  # fmt: skip
    assert (totalled.model_extra or {})["energy"]["joules"] > 0
    # in the ledger, each line's request is on the batch tier
    usage = httpx.get(f"{gw.url}/v1/usage", params={"limit": 200}, headers={"authorization": f"Bearer {ALICE}"})
    tiers = {row["id"]: row["service_tier"] for row in usage.json()["data"]}
    assert {tiers[line["response"]["request_id"]] for line in lines} == {"batch"}
    assert c.batches.list().data[0].id == batch.id
    paged = [f.id for f in c.files.list(limit=1, purpose="batch")]  # the SDK pages with 'after'
    assert upload.id in paged and len(paged) == len(set(paged))


def test_an_invalid_input_file_fails_the_batch_with_its_errors(gw):
    c = client(gw)
    bad = [chat_line(0), {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions", "body": {}},
           {"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {}}]  # fmt: skip
    upload = c.files.create(file=("bad.jsonl", io.BytesIO(jsonl(bad) + b"not json\n")), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed"
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert codes == {("duplicate_custom_id", 2), ("invalid_method", 3), ("mismatched_endpoint", 3),
                     ("invalid_json_line", 4)}  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")


def test_keys_see_their_own_files_and_batches_and_an_admin_sees_all(gw):
    alice, bob, root = client(gw), client(gw, BOB), client(gw, ROOT)
    upload = alice.files.create(file=("a.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch")
    batch = alice.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):  # his batch cannot use her file either
        bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert root.batches.retrieve(batch.id).id == batch.id
    assert batch.id not in [b.id for b in bob.batches.list().data]
    r = httpx.get(f"{gw.url}/v1/batches")
    assert r.status_code == 401


def test_a_cancelled_batch_ends_cancelled_with_its_unsent_lines_in_the_error_file(gw):
    c = client(gw)
    lines = [chat_line(i, max_tokens=256, min_tokens=256) for i in range(80)]
    upload = c.files.create(file=("many.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = c.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = finished(c, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.completed + counts.failed == 80 and counts.failed > 0
    errors = [orjson.loads(line) for line in c.files.content(done.error_file_id).text.splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_a_finished_batch_cannot_be_cancelled(gw):
    c = client(gw)
    upload = c.files.create(file=("one.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch")
    batch = finished(c, c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                         completion_window="24h").id)  # fmt: skip
    assert batch.status == "completed"
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_a_file_a_running_batch_reads_cannot_be_deleted(gw):
    c = client(gw)
    lines = [chat_line(i, max_tokens=256, min_tokens=256) for i in range(40)]
    upload = c.files.create(file=("busy.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = c.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.ConflictError):
        c.files.delete(upload.id)
    c.batches.cancel(batch.id)
    assert finished(c, batch.id).status == "cancelled"
    assert c.files.delete(upload.id).deleted


def test_anonymous_callers_get_no_batch_api_once_keys_exist_even_where_generation_is_open():
    from gateway.api.batches import BatchEndpoints
    from gateway.api.http import Request
    from gateway.config import KeysConfig
    from gateway.errors import GatewayError
    from gateway.policy.keys import KeyRing

    keys = KeyRing(KeysConfig(required=False, keys=[{"name": "alice", "hash": hash_key(ALICE)}]))
    endpoints = BatchEndpoints(None, keys, None, None, None)  # type: ignore[arg-type]
    anonymous = Request({"type": "http", "headers": []}, None, None)  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as refused:
        endpoints._who(anonymous)
    assert refused.value.status == 401  # else every anonymous caller would share one owner's files
    alice = Request({"type": "http", "headers": [(b"authorization", f"Bearer {ALICE}".encode())]}, None, None)  # type: ignore[arg-type]
    assert endpoints._who(alice)[0].key_name == "alice"


def test_a_keys_uploads_are_bounded_in_all(sims, tmp_path):
    from gateway.config import load_config

    keys = [{"name": "alice", "team": "nlp", "hash": hash_key(ALICE)}, {"name": "bob", "team": "nlp", "hash": hash_key(BOB)}]
    config = base_config(tmp_path, [backend_entry("medium", sims[MEDIUM])], keys={"required": True, "keys": keys},
                         batch={"max_owner_bytes": 1200})  # fmt: skip
    data = jsonl([chat_line(i) for i in range(3)])  # ~ 500 bytes: two fit in 1,200, not three
    assert 400 < len(data) < 600
    with InProcessGateway(load_config(write_config(tmp_path, config))) as gateway:
        c = client(gateway)
        first = c.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="batch")
        c.files.create(file=("b.jsonl", io.BytesIO(data)), purpose="batch")
        with pytest.raises(openai.APIStatusError) as full:
            c.files.create(file=("c.jsonl", io.BytesIO(data)), purpose="batch")
        assert full.value.status_code == 413 and full.value.body["code"] == "storage_limit_exceeded"
        client(gateway, BOB).files.create(file=("b.jsonl", io.BytesIO(data)), purpose="batch")  # another key's own room
        c.files.delete(first.id)
        c.files.create(file=("c.jsonl", io.BytesIO(data)), purpose="batch")  # room again
