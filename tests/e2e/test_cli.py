"""The command line as a user runs it: serve, demo, sim, config errors."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import openai

from gateway.sim.process import start_sim
from tests.support import MEDIUM
from tests.support import ROOT, free_port, wait_until


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, **kw)


def test_invalid_config_names_field_and_position(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("backends:\n  - name: a\n    url: not a url\nserver:\n  port: x\n")
    result = cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:3:5: backends[0].url: Value error, must be an http(s) URL" in result.stderr
    assert f"{path}:5:3: server.port: Input should be a valid integer" in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path):
    result = cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    wait_until(ready, 30, what="gateway")
    assert proc.poll() is None, proc.stdout.read()
    return proc, url


def test_serve_with_backend_flags_discovers_models(tmp_path):
    with start_sim(["--model", MEDIUM, "--params-b", "8", "--speed", "instant"]) as sim:
        proc, url = _serve("serve", "--backend", sim.url + "/v1", "--log-level", "warning")
        try:
            models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
            assert MEDIUM in models
            r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                           json={"model": MEDIUM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
            assert r.status_code == 200
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0


def test_demo_serves_the_openai_sdk_and_stops_cleanly_on_ctrl_c(tmp_path):
    proc, url = _serve("demo", "--speed", "instant", "--ledger", str(tmp_path / "demo.db"), "--log-level", "warning")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0)
        models = {m.id: m.model_extra for m in client.models.list()}
        sizes = sorted(m["params_b"] for m in models.values() if m.get("params_b"))
        assert sizes[0] <= 2 and sizes[-1] >= 30  # a small and a large model
        assert any(m.get("family") == "qwen3" for m in models.values())  # a Qwen3-style reasoning model
        r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hello!"}])
        assert r.choices[0].message.content
        # every Python snippet of the README that talks to the demo runs as it is written
        snippets = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        snippets = [code for code in snippets if "http://127.0.0.1:8000" in code]
        assert len(snippets) >= 3
        for code in snippets:
            run = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000", url)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
            assert run.returncode == 0, f"{code}\n{run.stderr}"
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"{url}/v1" in out and "from openai import OpenAI" in out  # the ready-to-paste snippet
    sim_urls = [line.split(" at ")[-1].strip() for line in out.splitlines() if " at http://" in line]
    assert len(sim_urls) >= 2
    time.sleep(0.5)
    for sim_url in sim_urls:  # every simulated backend is gone too
        try:
            httpx.get(f"{sim_url}/health", timeout=1)
            raise AssertionError(f"{sim_url} still answers after Ctrl-C")
        except httpx.HTTPError:
            pass


def test_sim_command_runs_one_simulated_vllm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "sim", "--model", "m-1B", "--params-b", "1",
                             "--port", str(port), "--speed", "instant"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"SIM READY http://127.0.0.1:{port}"
        card = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]
        assert card["id"] == "m-1B" and card["owned_by"] == "vllm" and card["max_model_len"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_hash_key_reads_the_key_from_stdin_and_generates_random_ones():
    from gateway.policy.keys import hash_key

    piped = cli("hash-key", input="my-secret-key\n")
    assert piped.returncode == 0 and piped.stdout.strip() == hash_key("my-secret-key")
    on_the_line = cli("hash-key", "my-secret-key")  # still works, with a warning about shell history
    assert on_the_line.stdout.strip() == hash_key("my-secret-key") and "history" in on_the_line.stderr
    made = cli("hash-key", "--generate").stdout.splitlines()
    key, digest = made[0].split()[-1], made[1].split()[-1]
    assert key.startswith("sk-nudge-") and len(key) >= 40 and digest == hash_key(key)
    assert cli("hash-key", "--generate").stdout.splitlines()[0] != made[0]
