"""Command line of the simulator: ``python -m gateway.sim`` (and ``nudge-gateway sim``).

``add_arguments(parser)`` and ``run(args)`` let the project's CLI expose the same options. The
server listens on a socket it binds itself (so ``--port 0`` works and the port is known before
start), prints ``SIM READY http://HOST:PORT`` once it accepts connections, and stops cleanly (exit
status 0) on SIGINT or SIGTERM. SIGUSR1 clears injected faults (``POST /debug/fault`` cannot
reach a server that refuses connections).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import re
import signal
import socket
import sys

import uvicorn

from .power import QUANTIZATION_BITS
from .server import Listener, SimApp, SimConfig


def _speed(value: str) -> float | None:
    if value == "realistic":
        return 1.0
    if value == "instant":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected realistic, instant or a speed-up factor such as 20") from None
    if speed <= 0:
        raise argparse.ArgumentTypeError("the speed-up factor must be positive")
    return speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (the HF id vLLM would load)")
    parser.add_argument(
        "--params-b",
        type=float,
        default=None,
        help="parameters in billions (default: read from the name, e.g. Qwen3-8B → 8)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--reasoning",
        choices=["qwen3", "deepseek_r1", "none"],
        default="none",
        help="reasoning parser / model family: qwen3 (hybrid), deepseek_r1 (always thinks)",
    )
    parser.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help="realistic, instant (no sleeps, same bookkeeping) or a speed-up factor",
    )
    parser.add_argument("--vllm-version", default="0.16", help="vLLM release whose API behaviour to imitate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--gpus", "--tensor-parallel-size", dest="gpus", type=int, default=1)
    parser.add_argument("--gpu", choices=["h200", "h100"], default="h200")
    parser.add_argument(
        "--power-model",
        choices=["additive", "roofline"],
        default="additive",
        help="GPU model and per-request ground truth: additive (power.py) or roofline (roofline.py, a form the "
        "gateway's attribution does not share)",
    )
    parser.add_argument(
        "--quantization", "-q", choices=sorted(QUANTIZATION_BITS), default=None,
        help="weight quantization, as vLLM's flag: the weights stream and occupy their own bytes "
        "(default: bf16)",
    )  # fmt: skip
    parser.add_argument("--task", choices=["generate", "embed"], default="generate")
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--max-num-seqs", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-tokens", type=int, default=None, help="override the KV-cache size (tokens)")
    parser.add_argument("--embedding-dim", type=int, default=1024)
    parser.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='let the model call tools on its own (tool_choice "auto"); needs --tool-call-parser',
    )
    parser.add_argument(
        "--tool-call-parser",
        default=None,
        metavar="NAME",
        help="vLLM's tool-call parser (hermes, llama3_json, mistral, qwen3_xml, …); stored, the output is the same",
    )
    parser.add_argument(
        "--max-logprobs",
        type=int,
        default=20,
        help="most logprobs a request may ask for (sampled and prompt); -1: the whole vocabulary",
    )
    parser.add_argument(
        "--enable-force-include-usage",
        action="store_true",
        help="a usage chunk at the end of every stream, asked for or not",
    )
    parser.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="usage.prompt_tokens_details.cached_tokens in answers",
    )
    parser.add_argument("--enable-tokenizer-info-endpoint", action="store_true", help="serve GET /tokenizer_info")
    parser.add_argument(
        "--show-hidden-metrics-for-version",
        default=None,
        metavar="VERSION",
        help="also export the metrics deprecated in that release (the previous minor), as vLLM does",
    )
    parser.add_argument("--enable-server-load-tracking", action="store_true")
    parser.add_argument("--enable-request-id-headers", action="store_true")
    parser.add_argument(
        "--no-coalesce",
        action="store_true",
        help="one SSE event per token even when the reader lags (vLLM merges them)",
    )
    parser.add_argument("--dcgm-pod", default=None, help="pod label on the DCGM metrics")
    parser.add_argument("--dcgm-namespace", default=None, help="namespace label on the DCGM metrics")
    parser.add_argument("--dcgm-container", default=None, help="container label on the DCGM metrics")
    parser.add_argument("--log-level", default="warning")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    params = args.params_b
    if params is None:
        match = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", args.model)
        if not match:
            raise ValueError(f"cannot read the parameter count from {args.model!r}; pass --params-b")
        params = float(match.group(1))
    if params <= 0 or args.gpus < 1 or args.max_model_len < 16:
        raise ValueError("--params-b must be positive, --gpus at least 1, --max-model-len at least 16")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")  # as vLLM refuses to start
    labels = {
        k: v
        for k, v in (("container", args.dcgm_container), ("namespace", args.dcgm_namespace), ("pod", args.dcgm_pod))
        if v is not None
    }
    return SimConfig(
        model=args.model,
        params_b=params,
        served_model_names=args.served_model_name or [args.model],
        reasoning=args.reasoning,
        speed=args.speed,
        vllm_version=args.vllm_version,
        seed=args.seed,
        max_model_len=args.max_model_len,
        gpus=args.gpus,
        gpu=args.gpu,
        task=args.task,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        kv_cache_tokens=args.kv_cache_tokens,
        embedding_dim=args.embedding_dim,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        enable_server_load_tracking=args.enable_server_load_tracking,
        enable_request_id_headers=args.enable_request_id_headers,
        coalesce=not args.no_coalesce,
        dcgm_labels=labels,
        power_model=args.power_model,
        quantization=args.quantization,
        max_logprobs=args.max_logprobs,
        enable_force_include_usage=args.enable_force_include_usage,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_tokenizer_info_endpoint=args.enable_tokenizer_info_endpoint,
        show_hidden_metrics_for_version=args.show_hidden_metrics_for_version,
    )


class _UvicornListener(Listener):
    """Closes and reopens uvicorn's listening socket on the same address."""

    def __init__(self, server: uvicorn.Server, family: int, address: tuple) -> None:
        self.server, self.family, self.address = server, family, address

    def pause(self) -> None:
        for srv in self.server.servers:
            srv.close()
        self.server.servers = []

    def resume(self) -> None:
        if self.server.servers:
            return
        sock = _bind(self.family, self.address)  # accepting (into the backlog) from here on
        server = self.server
        config = server.config

        def create_protocol(_loop=None):
            # uvicorn types http_protocol_class as type[asyncio.Protocol]; its HTTP protocols take these arguments
            return config.http_protocol_class(
                config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=_loop  # type: ignore[call-arg]
            )

        async def serve() -> None:
            srv = await asyncio.get_running_loop().create_server(create_protocol, sock=sock, backlog=config.backlog)
            server.servers.append(srv)

        asyncio.get_running_loop().create_task(serve())


def _bind(family: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn, announcing readiness and exiting 0 on SIGINT/SIGTERM."""

    def __init__(self, config: uvicorn.Config, app: SimApp, sock: socket.socket, ready_url: str) -> None:
        super().__init__(config)
        self.sim, self.sock, self.ready_url = app, sock, ready_url

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        # SIGUSR1 clears injected faults: the way back when the listener refuses connections
        loop.add_signal_handler(signal.SIGUSR1, self.sim.clear_faults)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self.sim.listener = _UvicornListener(self, self.sock.family, self.sock.getsockname())
        gc.freeze()  # start-up objects need no more collecting
        print(f"SIM READY {self.ready_url}", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        app = SimApp(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        sock = _bind(family, (args.host, args.port))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level=args.log_level,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=1,
    )
    server = _Server(config, app, sock, url)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(server.serve(sockets=[sock]))
    else:
        uvloop.run(server.serve(sockets=[sock]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.sim", description="A faithful vLLM simulator.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
