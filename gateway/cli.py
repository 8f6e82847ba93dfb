"""``nudge-gateway``: serve | demo | sim | check | report | hash-key | router fit."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from gateway import __version__


def _serve_app(gateway, host: str, port: int, log_level: str) -> int:
    import uvicorn

    from gateway.api.server import GatewayHttpProtocol

    server_cfg = gateway.config.server
    config = uvicorn.Config(
        gateway,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, sending each response head with its body; bounded connections, header deadline
        http=GatewayHttpProtocol.configured(server_cfg.max_connections, server_cfg.header_timeout_s),
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    sockets = None
    if server_cfg.admin_port is not None:  # one server, two listeners: the app tells them apart by port
        admin = uvicorn.Config(gateway, host=host, port=server_cfg.admin_port)
        sockets = [config.bind_socket(), admin.bind_socket()]
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    return 0 if server.started else 1


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.config import YamlFileError, config_from_backends, load_config

    if bool(args.config) == bool(args.backend):
        print("serve: give either --config FILE or one or more --backend URL", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else config_from_backends(args.backend)
    except YamlFileError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic errors from --backend values
        print(f"invalid backend: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    _logging(args.log_level)
    try:
        gateway = Gateway(config)
    except (OSError, ValueError) as exc:  # e.g. routing.model names a file that is not a router artefact
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    return _serve_app(gateway, host, port, args.log_level)


# ---------------------------------------------------------------------- demo

DEMO_MODELS = [
    # name, params (B), reasoning family of the simulator
    ("Qwen/Qwen3-1.7B", 1.7, "qwen3"),
    ("meta-llama/Llama-3.1-8B-Instruct", 8.0, "none"),
    ("Qwen/Qwen3-32B", 32.0, "qwen3"),
]

SNIPPET = """
Nudge Gateway demo is running on {url}/v1 in front of {n} simulated vLLM servers:
{models}
Paste this into Python (pip install openai):

    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="demo")
    r = client.chat.completions.create(
        model="auto",  # the gateway picks the smallest adequate model
        messages=[{{"role": "user", "content": "What is the capital of France?"}}],
    )
    print(r.choices[0].message.content)
    print(r.model, r.usage.model_extra.get("energy"))

Or: curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
      -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Metrics: {url}/metrics    Usage ledger: {url}/v1/usage    Ctrl-C stops everything.
"""


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.config import BackendConfig, Config, DcgmMeterConfig, LedgerConfig, ServerConfig
    from gateway.sim.process import start_sim

    _logging(args.log_level)
    sims = []
    try:
        for i, (name, params, reasoning) in enumerate(DEMO_MODELS):
            sims.append(
                start_sim(
                    [
                        "--model",
                        name,
                        "--params-b",
                        str(params),
                        "--reasoning",
                        reasoning,
                        "--speed",
                        args.speed,
                        "--seed",
                        str(i),
                        "--enable-auto-tool-choice",
                        "--tool-call-parser",
                        "hermes",
                    ]
                )
            )
        backends = [
            BackendConfig(
                name=f"sim-{name.split('/')[-1].lower()}",
                url=sim.url,
                meter=DcgmMeterConfig(type="dcgm", url=f"{sim.url}/dcgm/metrics"),
            )
            for (name, _, _), sim in zip(DEMO_MODELS, sims)
        ]
        ledger = args.ledger or str(Path(tempfile.gettempdir()) / "nudge-demo-usage.db")
        config = Config(
            backends=backends,
            server=ServerConfig(host=args.host, port=args.port),
            ledger=LedgerConfig(path=ledger),
        )
        url = f"http://{args.host}:{args.port}"
        models = "\n".join(
            f"  - {name} ({params:g}B) at {sim.url}" for (name, params, _), sim in zip(DEMO_MODELS, sims)
        )
        print(SNIPPET.format(url=url, n=len(sims), models=models), flush=True)
        return _serve_app(Gateway(config), args.host, args.port, args.log_level)
    finally:
        for sim in sims:
            sim.stop()


# ---------------------------------------------------------------------- small commands


def cmd_sim(args: argparse.Namespace) -> int:
    from gateway.sim.cli import run

    return run(args)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.policy.check import run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from gateway.telemetry.report import run

    return run(args)


def cmd_ledger_prune(args: argparse.Namespace) -> int:
    from gateway.telemetry.ledger.commands import prune

    return prune(args)


def cmd_hash_key(args: argparse.Namespace) -> int:
    from gateway.policy.keys import hash_key

    if args.generate:
        import secrets

        key = "sk-nudge-" + secrets.token_urlsafe(32)  # 256 random bits: no dictionary reaches it
        print(f"key:  {key}\nhash: {hash_key(key)}")
        return 0
    if args.key is not None:
        print("hash-key: a key on the command line stays in shell history and process lists; "
              "pipe it in or type it at the prompt instead", file=sys.stderr)  # fmt: skip
        key = args.key
    elif sys.stdin.isatty():
        import getpass

        key = getpass.getpass("API key (not echoed): ")
    else:
        key = sys.stdin.readline().strip()
    if not key:
        print("hash-key: no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def cmd_router_fit(args: argparse.Namespace) -> int:
    from gateway.config import YamlFileError, load_config
    from gateway.routing.refit import run

    models = {}
    if args.config:
        try:
            models = load_config(args.config).models
        except YamlFileError as exc:
            print(f"invalid config:\n{exc}", file=sys.stderr)
            return 2
    run(
        Path(args.data),
        Path(args.out),
        models,
        mode=args.mode,
        keep=args.keep,
        holdout=args.holdout,
        l2=args.l2,
        base=Path(args.base) if args.base else None,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudge-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nudge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", help="gateway YAML config")
    p.add_argument("--backend", action="append", help="vLLM base URL (repeatable); models are discovered")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default=os.environ.get("NUDGE_LOG_LEVEL", "info"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="simulated vLLM backends + the gateway, ready for the openai SDK")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--speed", default="realistic", help="realistic | instant | a speed-up factor")
    p.add_argument("--ledger", help="SQLite usage ledger (default: in the temp directory)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sim", help="one simulated vLLM server")
    from gateway.sim.cli import add_arguments as sim_arguments

    sim_arguments(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("check", help="validate a policy file")
    from gateway.policy.check import add_arguments as check_arguments

    check_arguments(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help="energy and usage report from the ledger")
    from gateway.telemetry.report import add_arguments as report_arguments

    report_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ledger", help="look after the usage ledger")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    from gateway.telemetry.ledger.commands import add_prune_arguments

    pr = lsub.add_parser(
        "prune", help="delete rows older than a retention period", description="Delete old usage-ledger rows."
    )
    add_prune_arguments(pr)
    pr.set_defaults(func=cmd_ledger_prune)

    p = sub.add_parser(
        "hash-key",
        help="print the sha256:... form of an API key for the config",
        description="Reads the key from a prompt (or stdin when piped); --generate makes a new one.",
    )
    p.add_argument("key", nargs="?", help=argparse.SUPPRESS)  # still accepted, with a warning
    p.add_argument("--generate", action="store_true", help="make a new random key and print it with its hash")
    p.set_defaults(func=cmd_hash_key)

    p = sub.add_parser("router", help="the right-sizing model")
    rsub = p.add_subparsers(dest="router_command", required=True)
    f = rsub.add_parser(
        "fit",
        help="refit the router on your own labelled prompts (needs the [train] extra)",
        description="Refit the router on labelled prompts (gateway/routing/refit.py has the format).",
    )
    f.add_argument(
        "--data", required=True, help="JSONL: {messages|prompt, scores: {model: quality in [0, 1]}} per line"
    )
    f.add_argument("--out", required=True, help="artefact to write; point routing.model at it")
    f.add_argument("--config", help="gateway config whose models: section gives sizes and abilities")
    f.add_argument(
        "--mode",
        choices=("calibrate", "full"),
        default="calibrate",
        help="calibrate: refit the loss scale and starting price; full: also the weights",
    )
    f.add_argument("--keep", type=float, default=0.95, help="share of the top model's quality to keep (default 0.95)")
    f.add_argument("--holdout", type=float, default=0.2, help="share of prompts kept out of the fit and reported on")
    f.add_argument("--l2", type=float, default=10.0, help="full mode: pull toward the shipped weights")
    f.add_argument("--base", help="artefact to start from (default: the shipped one)")
    f.set_defaults(func=cmd_router_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
