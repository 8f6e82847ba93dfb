"""Stand-ins that let vLLM's OpenAI-server tests run against Nudge Gateway's simulator.

- ``RemoteOpenAIServer``: the interface of vLLM's ``tests.utils.RemoteOpenAIServer`` (context
  manager, ``url_root``, ``url_for``, ``get_client``, ``get_async_client``, ``host``, ``port``,
  ``show_hidden_metrics``) but it starts ``python -m gateway.sim`` instead of ``vllm serve``.
  ``vllm serve`` arguments are translated: GPU/engine-only ones are ignored, the rest are passed
  on when the simulator's ``--help`` lists the same flag (so flags the simulator gains later are
  picked up without touching this file), ``--reasoning-parser X`` becomes ``--reasoning X``
  unless the simulator has ``--reasoning-parser`` itself. Anything else is dropped and recorded
  in ``DROPPED_ARGS`` (printed in the terminal summary).
- ``get_tokenizer`` / ``AutoTokenizer``: a tokenizer backed by the running simulator's
  ``/tokenize`` and ``/detokenize``; used only where a test checks that token ids are
  *consistent* across endpoints (never where it compares against the real HF tokenizer).
- ``na(category, reason)``: the skip mark for cases that cannot apply to a simulator.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import openai
import pytest
import requests

SIM_ROOT = os.environ.get("SIM_ROOT", "/work/main")
SIM_PYTHON = os.environ.get("SIM_PYTHON", sys.executable)
SIM_VLLM_VERSION = os.environ.get("SIM_VLLM_VERSION")  # None: the simulator's default
if SIM_ROOT not in sys.path:
    sys.path.insert(0, SIM_ROOT)

from gateway.sim.process import start_sim  # noqa: E402  (stdlib only, no server import)

# vllm serve flags with no meaning for a simulator (GPU, compilation, process layout, downloads)
IGNORED = {
    "--dtype", "--enforce-eager", "--max-num-seqs", "--gpu-memory-utilization", "--trust-remote-code",
    "--disable-frontend-multiprocessing", "--enable-chunked-prefill", "--no-enable-prefix-caching",
    "--port", "--host", "--max-cpu-loras", "--max-lora-rank",
}  # fmt: skip
# flags that take no value on the vllm serve side
VLLM_BOOL = {
    "--enforce-eager", "--trust-remote-code", "--disable-frontend-multiprocessing", "--enable-chunked-prefill",
    "--no-enable-prefix-caching", "--enable-auto-tool-choice", "--enable-server-load-tracking",
    "--enable-force-include-usage", "--enable-prompt-tokens-details", "--enable-tokenizer-info-endpoint",
    "--enable-lora", "--enable-request-id-headers", "--enable-prompt-embeds",
}  # fmt: skip

DROPPED_ARGS: dict[str, set[str]] = {}  # flag -> models it was dropped for
LIVE: dict[str, RemoteOpenAIServer] = {}  # model -> the server started last for it


def na(category: str, reason: str):
    """Mark a case as not applicable to a simulator."""
    return pytest.mark.skip(reason=f"n/a [{category}] {reason}")


@functools.cache
def sim_flags() -> dict[str, list[str] | None]:
    """The simulator's options: flag -> choices (or None)."""
    out = subprocess.run(
        [SIM_PYTHON, "-m", "gateway.sim", "--help"], cwd=SIM_ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    flags: dict[str, list[str] | None] = {}
    for m in re.finditer(r"(--[a-z0-9][a-z0-9-]*)(?: \{([^}]*)\})?", out):
        choices = m.group(2).split(",") if m.group(2) else None
        flags.setdefault(m.group(1), choices)
    return flags


def params_b(model: str) -> float:
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", model)
    if m:
        return float(m.group(1))
    m = re.search(r"(\d+(?:\.\d+)?)[mM](?![a-zA-Z])", model)
    if m:
        return float(m.group(1)) / 1000
    return 0.125  # gpt2, tiny-random models


def split_args(args: list[str]) -> list[tuple[str, list[str]]]:
    """``vllm serve`` arguments as (flag, values)."""
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(args):
        a = str(args[i])
        i += 1
        if not a.startswith("--"):
            if out:
                out[-1][1].append(a)
            continue
        if "=" in a:
            flag, value = a.split("=", 1)
            out.append((flag, [value]))
            continue
        values: list[str] = []
        if a not in VLLM_BOOL:
            while i < len(args) and not str(args[i]).startswith("--"):
                values.append(str(args[i]))
                i += 1
        out.append((a, values))
    return out


def translate(model: str, vllm_args: list[str]) -> list[str]:
    flags = sim_flags()
    sim: list[str] = []
    for flag, values in split_args(vllm_args):
        if flag in IGNORED:
            continue
        if flag == "--reasoning-parser" and "--reasoning-parser" not in flags:
            choices = flags.get("--reasoning") or []
            if values and values[0] in choices:
                sim += ["--reasoning", values[0]]
                continue
        if flag in flags:
            sim += [flag, *values]
        else:
            DROPPED_ARGS.setdefault(flag, set()).add(model)
    return sim


class RemoteOpenAIServer:
    DUMMY_API_KEY = "token-abc123"

    def __init__(
        self,
        model: str,
        vllm_serve_args: list[str],
        *,
        env_dict: dict[str, str] | None = None,
        seed: int | None = 0,
        auto_port: bool = True,
        max_wait_seconds: float | None = None,
        override_hf_configs=None,
        sim_speed: str = "instant",
        sim_args: list[str] | None = None,
    ) -> None:
        vllm_serve_args = list(vllm_serve_args)
        if seed is not None and "--seed" not in vllm_serve_args:
            vllm_serve_args += ["--seed", str(seed)]
        self.show_hidden_metrics = any(
            str(a).startswith("--show-hidden-metrics-for-version") for a in vllm_serve_args
        )
        args = ["--model", model, "--params-b", str(params_b(model)), "--speed", sim_speed]
        if SIM_VLLM_VERSION:
            args += ["--vllm-version", SIM_VLLM_VERSION]
        if sim_speed == "instant" and "--no-coalesce" in sim_flags():
            # everything is generated at once at instant speed: coalescing would merge each stream
            # into one event, which vLLM does only for a lagging reader; keep one event per token
            args.append("--no-coalesce")
        args += translate(model, vllm_serve_args) + list(sim_args or [])
        self.sim_command = args
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self.sim = start_sim(args, timeout=max_wait_seconds or 60, env=env)
        m = re.match(r"http://([^:/]+):(\d+)", self.sim.url)
        assert m, self.sim.url
        self.host, self.port = m.group(1), int(m.group(2))
        self.model = model
        LIVE[model] = self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if LIVE.get(self.model) is self:
            del LIVE[self.model]
        self.sim.__exit__(exc_type, exc_value, traceback)

    @property
    def url_root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, *parts: str) -> str:
        return self.url_root + "/" + "/".join(parts)

    def get_client(self, **kwargs):
        kwargs.setdefault("timeout", 600)
        return openai.OpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)

    def get_async_client(self, **kwargs):
        kwargs.setdefault("timeout", 600)
        return openai.AsyncOpenAI(base_url=self.url_for("v1"), api_key=self.DUMMY_API_KEY, max_retries=0, **kwargs)


class SimTokenizer:
    """The simulator's own tokenizer, through its /tokenize and /detokenize endpoints."""

    def __init__(self, model: str) -> None:
        self.model = model

    @property
    def server(self) -> RemoteOpenAIServer:
        if self.model not in LIVE:
            raise RuntimeError(f"no simulator running for {self.model}")
        return LIVE[self.model]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        r = requests.post(
            self.server.url_for("tokenize"),
            json={"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens},
        )
        r.raise_for_status()
        return r.json()["tokens"]

    def decode(self, ids: list[int]) -> str:
        r = requests.post(self.server.url_for("detokenize"), json={"model": self.model, "tokens": list(ids)})
        r.raise_for_status()
        return r.json()["prompt"]

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.encode(text)}


def get_tokenizer(tokenizer_name: str, **_kwargs) -> SimTokenizer:
    return SimTokenizer(tokenizer_name)


class AutoTokenizer:
    @staticmethod
    def from_pretrained(name: str, **_kwargs) -> SimTokenizer:
        return SimTokenizer(name)


def expected_version() -> str:
    """The vLLM release the simulator imitates, as ``/version`` of that release reports it."""
    text = SIM_VLLM_VERSION or "0.16"  # gateway/sim/cli.py: --vllm-version default
    parts = (text.split(".") + ["0", "0"])[:3]
    return ".".join(parts)


def count_chat_prompt_tokens(model: str, messages: list[dict]) -> int:
    """Prompt tokens of a chat request, as the server's own /tokenize counts them."""
    server = LIVE[model] if model in LIVE else next(iter(LIVE.values()))
    r = requests.post(
        server.url_for("tokenize"), json={"model": server.model, "messages": messages, "add_generation_prompt": True}
    )
    r.raise_for_status()
    return r.json()["count"]
