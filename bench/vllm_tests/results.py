"""vLLM's own OpenAI-server tests against the simulator: the results file and the README line.

    python bench/vllm_tests/results.py DEFAULT.xml [--also VERSION=OTHER.xml] [--commit SHA]
    python bench/vllm_tests/results.py --readme        # only rewrite the README line

The tests themselves are vLLM's (``SOURCES.md`` names each file and its vLLM commit). They are
adapted and run outside this repository, since their code must not be copied into it: each
``RemoteOpenAIServer(model, args)`` becomes ``simvllm.RemoteOpenAIServer`` (this folder), which
starts ``python -m gateway.sim`` with the ``vllm serve`` arguments the simulator has flags for;
imports of vLLM internals are replaced by local stand-ins; and cases that cannot apply to a
simulator are skipped with a reason ``n/a [category]`` (they need LoRA, multimodal inputs, vLLM
internals, a real model's text, tokenizer or logits). pytest's JUnit XML of that run is what this
script reads: one file at the simulator's default ``--vllm-version``, and optionally one per other
version (``SIM_VLLM_VERSION``). It writes ``bench/results/vllm-tests.json`` (every case's outcome)
and the README line between ``<!-- vllm-tests:begin -->`` and ``<!-- vllm-tests:end -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.common import readme_block  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vllm-tests.json"


def read(xml: Path) -> dict:
    cases: dict[str, dict] = {}
    for case in ET.parse(xml).iter("testcase"):
        tid = case.get("classname", "").removeprefix("adapted.") + "::" + case.get("name", "")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            lines = [ln[1:].strip() for ln in (failure.text or "").splitlines() if ln.startswith("E ")]
            cases[tid] = {"outcome": "failed", "why": (lines[0] if lines else failure.get("message", ""))[:200]}
        elif skipped is not None:
            found = re.search(r"n/a \[([^\]]+)\]\s*(.*)", skipped.get("message", ""))
            cases[tid] = {"outcome": "n/a", "category": found.group(1) if found else "other",
                          "why": (found.group(2) if found else skipped.get("message", ""))[:200]}  # fmt: skip
        else:
            cases[tid] = {"outcome": "passed"}
    outcomes = [c["outcome"] for c in cases.values()]
    passed, failed = outcomes.count("passed"), outcomes.count("failed")
    return {"passed": passed, "failed": failed, "applicable": passed + failed, "n/a": outcomes.count("n/a"),
            "cases": cases}  # fmt: skip


def sources() -> dict[str, str]:
    rows = re.findall(r"^\| (tests/\S+) \| ([0-9a-f]{40})\b", (Path(__file__).parent / "SOURCES.md").read_text(), re.M)
    return dict(rows)


def write_readme(r: dict) -> None:
    default = r["runs"][r["default_version"]]
    others = [f"{d['passed']} at {v}" for v, d in r["runs"].items() if v != r["default_version"]]
    commits = sorted(set(r["vllm_files"].values()))
    text = (
        f"vLLM's own OpenAI-server tests ({len(r['vllm_files'])} modules, at the vLLM commits listed in "
        f"`bench/vllm_tests/SOURCES.md`: {', '.join(c[:8] for c in commits)}), adapted to start the simulator "
        f"instead of `vllm serve` and run outside this repository: {default['passed']} of {default['applicable']} "
        f"applicable cases pass at the simulator's default `--vllm-version {r['default_version']}` "
        f"({default['passed'] / default['applicable']:.0%})" + (f", {', '.join(others)}" if others else "") +
        f"; {default['n/a']} cases need a real model's text, tokenizer or logits, LoRA, multimodal inputs or "
        f"vLLM internals (`bench/results/vllm-tests.json` lists every case and why; simulator {r['simulator']}, "
        f"{r['when'][:10]})."
    )  # fmt: skip
    readme_block("vllm-tests", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("xml", nargs="?", help="JUnit XML of the run at the simulator's default --vllm-version")
    ap.add_argument("--default-version", default="0.16")
    ap.add_argument("--also", action="append", default=[], help="VERSION=XML of a run with SIM_VLLM_VERSION")
    ap.add_argument("--commit", help="the simulator's commit the runs tested (default: HEAD)")
    ap.add_argument("--readme", action="store_true", help="only rewrite the README line from the results file")
    args = ap.parse_args()
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    if not args.xml:
        ap.error("give the JUnit XML of a run")
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()  # fmt: skip
    runs = {args.default_version: read(Path(args.xml))}
    for pair in args.also:
        version, _, path = pair.partition("=")
        runs[version] = read(Path(path))
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "simulator": commit,
              "default_version": args.default_version, "vllm_files": sources(), "runs": runs}  # fmt: skip
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    write_readme(result)
    for version, run in runs.items():
        print(f"--vllm-version {version}: {run['passed']} / {run['applicable']} applicable pass, {run['n/a']} n/a")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
