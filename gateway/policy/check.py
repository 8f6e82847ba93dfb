"""``nudge-gateway check FILE...``: validate policy files before they go live.

Prints every problem as ``file:line:col: field: message`` (what was expected included) on
stderr and exits 1; on success prints one line per file: the version it would get and its
sections. Also runnable as ``python -m gateway.policy.check FILE``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.policy.store import build_snapshot
from gateway.yamlfile import YamlFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy YAML file(s) to validate")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            failed += 1
            continue
        try:
            snap = build_snapshot(path, text)
        except YamlFileError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            n = len(exc.problems)
            print(f"{path}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
            failed += 1
            continue
        sections = ", ".join(snap.sections)
        print(f"{path}: OK: policy version {snap.schema_version} ({snap.sha256[:12]}), sections: {sections}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge-gateway check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
