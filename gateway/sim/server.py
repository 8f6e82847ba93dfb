"""The simulator's HTTP surface: a plain ASGI callable with a small dispatcher (no framework).

vLLM's routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``,
``/v1/responses`` (from 0.10.1, ``responses.py``), ``/v1/messages`` (from 0.11, ``messages.py``),
``/tokenize``, ``/detokenize``, ``/health``, ``/ping``, ``/load``, ``/version``, ``/metrics``.
Simulator routes: ``/dcgm/metrics`` (a DCGM exporter for the simulated GPUs),
``/debug/energy`` (the energy ground truth), ``/debug/trace`` (what arrived when, for an offline
replay), ``/debug/reset-counter`` (a driver reload),
``/debug/fault`` (failure injection, see ``faults.py``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import orjson

from . import messages, responses, text, tokinfo
from .engine import Engine
from .faults import Faults, FaultSpecError, parse_fault
from .generate import JSON_HEADERS, EngineDead, Generation
from .metrics import CONTENT_TYPE, MetricsExporter
from .params import ApiError, invalid, is_true
from .power import GPUS, QUANTIZATION_BITS, CostModel, DcgmCounters, StepModel
from .roofline import RooflineModel
from .sse import DONE
from .streaming import wait_disconnect
from .versions import STATUS_TYPES, VllmVersion


@dataclass
class SimConfig:
    model: str
    params_b: float
    served_model_names: list[str] = field(default_factory=list)
    reasoning: str = "none"  # qwen3 | deepseek_r1 | none
    speed: float | None = 1.0  # None: instant
    vllm_version: str = "0.16"
    seed: int = 0
    max_model_len: int = 32768
    gpus: int = 1
    gpu: str = "h200"
    task: str = "generate"  # generate | embed
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    kv_cache_tokens: int | None = None
    embedding_dim: int = 1024
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None  # stored only: the model writes Hermes blocks whatever the parser
    enable_server_load_tracking: bool = False
    enable_request_id_headers: bool = False
    coalesce: bool = True
    dcgm_labels: dict[str, str] = field(default_factory=dict)
    power_model: str = "additive"  # additive (power.CostModel) | roofline (roofline.RooflineModel)
    quantization: str | None = None  # --quantization: weights in QUANTIZATION_BITS[...] bits, else bf16
    max_logprobs: int = 20  # --max-logprobs (-1: the vocabulary)
    enable_force_include_usage: bool = False
    enable_prompt_tokens_details: bool = False
    enable_tokenizer_info_endpoint: bool = False
    show_hidden_metrics_for_version: str | None = None

    def __post_init__(self) -> None:
        if not self.served_model_names:
            self.served_model_names = [self.model]


def weight_bits(cfg: SimConfig) -> float:
    return QUANTIZATION_BITS[cfg.quantization] if cfg.quantization else 16.0


def kv_cache_capacity(cfg: SimConfig, cost: StepModel) -> int:
    """KV-cache tokens that fit beside the weights, as vLLM sizes its cache at start-up."""
    if cfg.kv_cache_tokens is not None:
        return cfg.kv_cache_tokens
    gpu = GPUS[cfg.gpu]
    weights = weight_bits(cfg) / 8.0 * cfg.params_b * 1e9 / cfg.gpus
    free = gpu.memory_bytes * cfg.gpu_memory_utilization - weights - 2 * 2**30
    if free <= 0:
        raise ValueError(
            f"No available memory for the cache blocks: {cfg.params_b:g}B parameters in {cfg.quantization or 'bf16'} "
            f"do not fit on "
            f"{cfg.gpus} × {gpu.model_name}. Use more GPUs (--gpus)."
        )
    capacity = int(free / cost.kv_bytes_per_gpu)
    if capacity < cfg.max_model_len:
        raise ValueError(
            f"The model's max seq len ({cfg.max_model_len}) is larger than the maximum number of tokens that can "
            f"be stored in KV cache ({capacity}). Try increasing `gpu_memory_utilization` or decreasing "
            "`max_model_len` when initializing the engine."
        )
    return capacity


def cache_info(cfg: SimConfig, kv_capacity: int) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` (vLLM's CacheConfig fields, as strings)."""
    return {
        "block_size": "16",
        "cache_dtype": "auto",
        "calculate_kv_scales": "False",
        "cpu_offload_gb": "0",
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": str(cfg.gpu_memory_utilization),
        "is_attention_free": "False",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(kv_capacity // 16),
        "num_gpu_blocks_override": "None",
        "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None",
        "swap_space": "4",
    }


class Listener:
    """Hooks to close and reopen the listening socket (``refuse_connections``); set by the runner."""

    def pause(self) -> None:  # pragma: no cover - replaced by the runner
        raise NotImplementedError

    def resume(self) -> None:  # pragma: no cover - replaced by the runner
        raise NotImplementedError


class SimApp:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.version = VllmVersion(cfg.vllm_version)
        bits = weight_bits(cfg)
        if cfg.power_model == "roofline":
            self.cost: StepModel = RooflineModel(
                cfg.params_b, cfg.gpus, GPUS[cfg.gpu], cfg.model, cfg.seed, weight_bits=bits
            )
        else:
            self.cost = CostModel(cfg.params_b, cfg.gpus, GPUS[cfg.gpu], weight_bits=bits)
        self.engine = Engine(
            self.cost,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            kv_capacity=kv_cache_capacity(cfg, self.cost),
            speed=cfg.speed,
        )
        self.dcgm = DcgmCounters(
            cfg.gpus, GPUS[cfg.gpu], cfg.seed, cfg.dcgm_labels, jitter=cfg.power_model == "roofline"
        )
        self.exporter = MetricsExporter(
            self.engine,
            cfg.served_model_names[0],
            self.version,
            cache_info(cfg, self.engine.kv_capacity),
            cfg.show_hidden_metrics_for_version,
        )
        self.faults = Faults()
        self.listener: Listener | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self.generation = Generation(self)
        self.in_flight = 0
        gen = self.generation
        get, post, both = ("GET",), ("POST",), ("GET", "POST")
        self.routes: dict[str, tuple[tuple[str, ...], Callable[..., Awaitable[None]]]] = {
            "/v1/chat/completions": (post, partial(self._generate, gen.chat)),
            "/v1/completions": (post, partial(self._generate, gen.completions)),
            "/v1/embeddings": (post, partial(self._generate, gen.embeddings)),
            **(
                {"/v1/responses": (post, partial(self._generate, partial(responses.handle, gen)))}
                if self.version.has_responses_api
                else {}
            ),
            **({"/v1/messages": (post, self.anthropic_messages)} if self.version.has_messages_api else {}),
            "/invocations": (post, self.invocations),
            "/v1/models": (get, self.models),
            "/tokenize": (post, self.tokenize),
            "/detokenize": (post, self.detokenize),
            **({"/tokenizer_info": (get, self.tokenizer_info)} if cfg.enable_tokenizer_info_endpoint else {}),
            "/health": (get, self.health),
            "/ping": (both, self.health),
            "/load": (get, self.load),
            "/version": (get, self.version_info),
            "/metrics": (get, self.metrics),
            "/dcgm/metrics": (get, self.dcgm_metrics),
            "/debug/energy": (get, self.debug_energy),
            "/debug/trace": (get, self.debug_trace),
            "/debug/reset-counter": (post, self.reset_counter),
            "/debug/fault": (both, self.fault),
        }

    # --- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = self.routes.get(scope["path"])
            if route is None:
                await self.send_json(send, 404, b'{"detail":"Not Found"}')
                return
            methods, handler = route
            if scope["method"] not in methods:
                await self.send_json(send, 405, b'{"detail":"Method Not Allowed"}')
                return
            try:
                await handler(scope, receive, send)
            except ApiError as e:
                await self.send_error(send, e)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.engine.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.engine.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- plumbing -----------------------------------------------------------------------------
    def request_id_header(self, rid: str) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", rid.encode("latin-1"))] if self.cfg.enable_request_id_headers else []

    async def send_json(self, send, status: int, body: bytes, rid: str | None = None, fault=None) -> None:
        headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body))]
        if rid is not None:
            headers += self.request_id_header(rid)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if fault is not None and fault.mode == "die_midstream":
            # half the body, then the connection drops (uvicorn closes an unfinished response)
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            return
        await send({"type": "http.response.body", "body": body})

    async def send_bytes(self, send, status: int, body: bytes, content_type: bytes | None) -> None:
        headers = [(b"content-length", b"%d" % len(body))]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def send_error(self, send, error: ApiError) -> None:
        if isinstance(error, EngineDead):
            await self.send_bytes(send, 500, b"", None)
            return
        body = self.version.error_body(error.message, error.status, error.err_type, error.param)
        await self.send_json(send, error.status, orjson.dumps(body))

    @staticmethod
    async def read_body(receive) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks = [body]
        while message.get("more_body"):
            message = await receive()
            chunks.append(message.get("body", b""))
        return b"".join(chunks)

    async def read_json(self, scope, receive, require_content_type: bool = True):
        if require_content_type:
            content_type = b""
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value
                    break
            if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
                raise invalid("", "Unsupported Media Type: Only 'application/json' is allowed", None, "value_error")
        raw = await self.read_body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise invalid("", "JSON decode error", {}, "json_invalid") from e
        if not isinstance(body, dict):
            raise invalid(
                "", "Input should be a valid dictionary or object to extract fields from", body, "model_attributes_type"
            )
        return body

    # --- generation ---------------------------------------------------------------------------
    async def invocations(self, scope, receive, send) -> None:
        """SageMaker's ``POST /invocations``: the generation endpoint the body is for, as vLLM
        picks it (``messages``: chat, ``prompt``: completions, ``input``: embeddings)."""
        body = await self.read_json(scope, receive)
        gen = self.generation
        for key, handler in (("messages", gen.chat), ("prompt", gen.completions), ("input", gen.embeddings)):
            if key in body:
                await self._generate(handler, scope, receive, send, body)
                return
        raise ApiError(
            400,
            "Cannot find suitable handler for request. Expected one of: ChatCompletionRequest, "
            "CompletionRequest, EmbeddingRequest",
        )

    async def _generate(self, handler, scope, receive, send, body: dict | None = None) -> None:
        if body is None:
            body = await self.read_json(scope, receive)
        streaming = is_true(body.get("stream"))
        fault = self.faults.take(streaming)
        if fault is not None:
            mode = fault.mode
            if mode == "engine_dead":
                if self.faults.active is None:  # the last request this fault was for
                    self.engine.revive()
                raise EngineDead()
            if mode == "error_before_first_byte":
                message = fault.message or "The engine failed before generating (simulated fault)."
                raise ApiError(fault.status, message, STATUS_TYPES.get(fault.status, "InternalServerError"))
            if mode == "hang" and (not streaming or fault.after_chunks == 0):
                await wait_disconnect(receive)
                return
        if self.engine.dead:
            raise EngineDead()
        track = self.cfg.enable_server_load_tracking
        if track:
            self.in_flight += 1
        try:
            await handler(scope, receive, send, body, fault)
        finally:
            if track:
                self.in_flight -= 1

    async def anthropic_messages(self, scope, receive, send) -> None:
        """``/v1/messages``: errors in Anthropic's shape (``messages.error_body``)."""
        try:
            await self._generate(partial(messages.handle, self.generation), scope, receive, send)
        except EngineDead:
            raise
        except ApiError as e:
            await self.send_json(send, e.status, orjson.dumps(messages.error_body(e.status, e.message)))

    async def midstream_fault(self, fault, send, receive, seq) -> None:
        """Break a stream that has sent ``after_chunks`` events."""
        if fault.mode == "midstream_error_event":
            message = fault.message or "The engine failed while generating (simulated fault)."
            status = fault.status
            event = self.version.stream_error_event(message, status, STATUS_TYPES.get(status, "InternalServerError"))
            await send({"type": "http.response.body", "body": event + DONE, "more_body": False})
        elif fault.mode == "hang":  # stall until the client leaves
            await wait_disconnect(receive)
        # die_midstream: return without finishing the response; the connection is closed

    # --- other vLLM endpoints -----------------------------------------------------------------
    async def models(self, scope, receive, send) -> None:
        now = int(time.time())
        cards = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.cfg.model,
                "parent": None,
                "max_model_len": self.cfg.max_model_len,
                "permission": [
                    {
                        "id": "modelperm-" + os.urandom(16).hex(),
                        "object": "model_permission",
                        "created": now,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in self.cfg.served_model_names
        ]
        await self.send_json(send, 200, orjson.dumps({"object": "list", "data": cards}))

    async def tokenize(self, scope, receive, send) -> None:
        body = await self.read_json(scope, receive)
        self.generation.check_model(body)
        if "messages" in body:
            prompt, _, _ = self.generation.chat_prompt(body)
        elif isinstance(body.get("prompt"), str):
            prompt = body["prompt"]
        else:
            raise invalid("prompt", "Field required", body, "missing")
        ids, pieces = text.encode(prompt)
        result = {
            "count": len(ids),
            "max_model_len": self.cfg.max_model_len,
            "tokens": ids,
            "token_strs": pieces if body.get("return_token_strs") else None,
        }
        await self.send_json(send, 200, orjson.dumps(result))

    async def detokenize(self, scope, receive, send) -> None:
        body = await self.read_json(scope, receive)
        self.generation.check_model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise invalid("tokens", "Input should be a valid list of integers", tokens, "list_type")
        for t in tokens:
            if not 0 <= t < text.VOCAB_SIZE:
                raise ApiError(400, f"Token id {t} is out of vocabulary")
        await self.send_json(send, 200, orjson.dumps({"prompt": text.decode(tokens)}))

    async def tokenizer_info(self, scope, receive, send) -> None:
        await self.send_json(send, 200, orjson.dumps(tokinfo.tokenizer_info(self.cfg.model, self.cfg.max_model_len)))

    async def health(self, scope, receive, send) -> None:
        dead = self.engine.dead
        if not dead:
            active = self.faults.active
            dead = active is not None and active.mode == "engine_dead"
        await self.send_bytes(send, 503 if dead else 200, b"", None)

    async def load(self, scope, receive, send) -> None:
        await self.send_json(send, 200, orjson.dumps({"server_load": self.in_flight}))

    async def version_info(self, scope, receive, send) -> None:
        await self.send_json(send, 200, orjson.dumps({"version": self.version.text}))

    async def metrics(self, scope, receive, send) -> None:
        await self.send_bytes(send, 200, self.exporter.render(), CONTENT_TYPE.encode())

    # --- simulator endpoints ------------------------------------------------------------------
    async def dcgm_metrics(self, scope, receive, send) -> None:
        now = self.engine.sync()
        await self.send_bytes(send, 200, self.dcgm.render(self.engine.meter, now), CONTENT_TYPE.encode())

    async def debug_energy(self, scope, receive, send) -> None:
        truth = self.engine.ground_truth()
        truth["gpus"] = self.cfg.gpus
        truth["speed"] = self.cfg.speed if self.cfg.speed is not None else "instant"
        await self.send_json(send, 200, orjson.dumps(truth))

    async def debug_trace(self, scope, receive, send) -> None:
        """What arrived when, and the engine's settings: enough to replay the load (replay.py)."""
        cfg = self.cfg
        await self.send_json(send, 200, orjson.dumps({
            "model": cfg.model, "params_b": cfg.params_b, "gpus": cfg.gpus, "gpu": cfg.gpu, "seed": cfg.seed,
            "power_model": cfg.power_model, "max_model_len": cfg.max_model_len, "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": cfg.max_num_batched_tokens, "kv_capacity": self.engine.kv_capacity,
            "now": self.engine.sync(), "arrivals": list(self.engine.trace),
        }))  # fmt: skip

    async def reset_counter(self, scope, receive, send) -> None:
        await self.read_body(receive)
        now = self.engine.sync()
        self.dcgm.reset(self.engine.meter, now)
        await self.send_json(send, 200, orjson.dumps({"reset_at": now}))

    async def fault(self, scope, receive, send) -> None:
        if scope["method"] == "POST":
            body = await self.read_json(scope, receive, require_content_type=False)
            try:
                fault = parse_fault(body)
            except FaultSpecError as e:
                raise ApiError(400, str(e)) from None
            self.clear_faults()
            if fault.mode != "none":
                self.faults.active = fault
                if fault.mode == "engine_dead":
                    self.engine.kill()
                elif fault.mode == "refuse_connections":
                    assert self.listener is not None, "refuse_connections needs the runner's listener"
                    self.listener.pause()
                    if fault.duration_s is not None:
                        loop = asyncio.get_running_loop()
                        self._reopen = loop.call_later(fault.duration_s, self.clear_faults)
        await self.send_json(send, 200, orjson.dumps(self.faults.state()))

    def clear_faults(self) -> None:
        active = self.faults.active
        self.faults.active = None
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        self.engine.revive()
        if active is not None and active.mode == "refuse_connections" and self.listener is not None:
            self.listener.resume()
