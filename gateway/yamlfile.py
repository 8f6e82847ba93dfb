"""Load YAML files so that validation errors can point at a line and column.

Both the gateway config and the policy files are YAML validated by pydantic. A pydantic
error names a location as a path (``("backends", 1, "url")``); this module keeps the
position of every mapping key and sequence item while loading, so the error can say
``gateway.yaml:12:7: backends[1].url: Field required``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml

Location = tuple[int | str, ...]


class YamlFileError(Exception):
    """A file that could not be read, parsed or validated; ``str()`` lists every problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class YamlDocument:
    path: str
    data: Any
    positions: dict[Location, tuple[int, int]]  # 1-based (line, column)

    def position(self, loc: Iterable[int | str]) -> tuple[int, int]:
        """The position of the deepest known prefix of ``loc`` (a missing field points at its parent)."""
        loc = tuple(loc)
        while loc:
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return self.positions.get((), (1, 1))


class _Loader(yaml.SafeLoader):
    pass


def _compose_positions(node: yaml.Node, loc: Location, out: dict[Location, tuple[int, int]]) -> None:
    out.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[loc + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _compose_positions(value_node, loc + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _compose_positions(item, loc + (i,), out)


MAX_NODES = 100_000  # values in a document once aliases are expanded (a real config has a few hundred)


def _check_expansion(root: yaml.Node, path: str) -> None:
    """Refuse a document whose aliases expand past ``MAX_NODES`` values ("billion laughs": a few
    lines of anchors that name each other ten times over) or refer to themselves; both would
    otherwise cost minutes and gigabytes before validation could say no."""
    count = 0
    ancestors: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            ancestors.discard(id(node))
            continue
        if id(node) in ancestors:
            raise YamlFileError(path, [f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: invalid YAML: "
                                       "an anchor refers to itself"])  # fmt: skip
        count += 1
        if count > MAX_NODES:
            raise YamlFileError(
                path, [f"{path}: invalid YAML: more than {MAX_NODES:,} values once aliases are expanded"]
            )
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            continue
        ancestors.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children)


def parse_yaml(text: str, path: str = "<string>") -> YamlDocument:
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlFileError(path, [f"{where}: invalid YAML: {problem}"]) from None
    except RecursionError:
        raise YamlFileError(path, [f"{path}: invalid YAML: nested too deep"]) from None
    positions: dict[Location, tuple[int, int]] = {}
    if node is not None:
        _compose_positions(node, (), positions)
    return YamlDocument(path=path, data=data, positions=positions)


def read_yaml(path: str | Path) -> YamlDocument:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return parse_yaml(text, path)


def format_loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_problems(doc: YamlDocument, error: pydantic.ValidationError) -> list[str]:
    """One ``file:line:col: field: message (got ...)`` line per pydantic error."""
    problems = []
    for err in error.errors(include_url=False):
        # pydantic puts union member / discriminator tags in the location; drop what is not in the file
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or doc_has_key(doc, p))
        line, col = doc.position(loc)
        got = ""
        if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], (dict, list)):
            got = f" (got {err['input']!r})"
        problems.append(f"{doc.path}:{line}:{col}: {format_loc(loc)}: {err['msg']}{got}")
    return problems


def doc_has_key(doc: YamlDocument, key: str) -> bool:
    return any(loc and loc[-1] == key for loc in doc.positions)


def load_model(model: type[pydantic.BaseModel], doc: YamlDocument) -> Any:
    """Validate ``doc`` against ``model``; raise YamlFileError with positioned messages."""
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise YamlFileError(doc.path, [f"{doc.path}:1:1: expected a mapping at the top level"])
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise YamlFileError(doc.path, validation_problems(doc, exc)) from None
