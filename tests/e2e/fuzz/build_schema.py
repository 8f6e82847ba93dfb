"""Cut OpenAI's OpenAPI description down to the operations the gateway serves, for the fuzz test.

    python tests/e2e/fuzz/build_schema.py [../shared/openai-openapi/openapi.yaml]

Keeps ``POST /chat/completions``, ``POST /completions``, ``POST /embeddings``, ``POST /responses`` and ``GET /models``
with every component they reference, and writes ``openai-subset.json`` beside this file (the
source is OpenAI's openai-openapi, MIT licence: see ``LICENSE-openai-openapi``). The servers
entry is dropped (the test points the schema at its own gateway, under ``/v1``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KEEP = {"/chat/completions": ["post"], "/completions": ["post"], "/embeddings": ["post"], "/models": ["get"],
        "/responses": ["post"]}


def refs(node, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            out.add(ref)
        for value in node.values():
            refs(value, out)
    elif isinstance(node, list):
        for value in node:
            refs(value, out)


def main() -> int:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[3] / "shared" / "openai-openapi" / "openapi.yaml")
    spec = yaml.safe_load(source.read_text())
    paths = {}
    for path, methods in KEEP.items():
        operations = {m: spec["paths"][path][m] for m in methods}
        for op in operations.values():
            op.pop("x-oaiMeta", None)
        paths["/v1" + path] = operations
    wanted: set[str] = set()
    refs(paths, wanted)
    components: dict[str, dict] = {}
    seen: set[str] = set()
    while wanted - seen:
        ref = sorted(wanted - seen)[0]
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)
        node = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        refs(node, wanted)
    out = {"openapi": spec["openapi"], "info": {**spec["info"], "title": spec["info"]["title"] + " (subset served by nudge-gateway)"},
           "paths": paths, "components": components}
    (HERE / "openai-subset.json").write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")
    (HERE / "LICENSE-openai-openapi").write_text((source.parent / "LICENSE").read_text())
    print(f"{len(paths)} paths, {sum(len(v) for v in components.values())} components")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
