"""Minimal instances of a JSON Schema: what a guided-decoding model writes for a tool's
``parameters`` or a ``response_format`` schema (``$ref``, ``anyOf``/``oneOf``/``allOf``,
``enum``, ``const``, bounds, lengths, ``multipleOf``, tuples), bounded so that a recursive
schema cannot blow up. Used by ``tools.py`` and ``structured.py``."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

# --- JSON Schema instances ------------------------------------------------------------------

_WORDS = ("Paris", "example", "alpha", "report", "blue", "north", "summary", "sample", "default", "delta")
_FORMATS = {
    "date": "2024-05-01",
    "date-time": "2024-05-01T12:00:00Z",
    "time": "12:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
}
_MAX_DEPTH = 16
_MAX_NODES = 4000  # values generated per instance: a recursive schema cannot blow up
_MAX_COUNT = 256  # items or properties a minItems / minProperties may ask for
_MAX_LENGTH = 4096  # characters a minLength may ask for


class Instance:
    """A minimal valid instance of a JSON Schema (draft 4 to 2020-12, the parts tools use):
    required properties only, ``$ref``/``$defs``, ``anyOf``/``oneOf`` (the first non-null
    branch), ``allOf`` (merged), ``enum`` (the first value), ``const``, bounds, lengths, item
    counts and ``multipleOf``. ``pattern`` is not solved (a sample word is used)."""

    def __init__(self, root: Any, salt: str) -> None:
        self.root = root
        self.salt = salt
        self.budget = _MAX_NODES

    def pick(self, path: str, n: int) -> int:
        digest = hashlib.blake2b(f"{self.salt}\x00{path}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little") % n

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def value(self, schema: Any, path: str, depth: int = 0, variant: int = 0) -> Any:
        self.budget -= 1
        if schema is True or schema is None:
            return "value"
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self.budget < 0:
            return None
        if isinstance(schema.get("$ref"), str):
            target = self.resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            merged = {**target, **rest} if isinstance(target, dict) else rest
            return self.value(merged, path, depth + 1, variant)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[variant % len(enum)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")] or options
                rest = {k: v for k, v in schema.items() if k != key}
                branch = usable[0]
                if isinstance(branch, dict) and isinstance(branch.get("$ref"), str):
                    branch = self.resolve(branch["$ref"])
                return self.value(_merge(rest, branch), path, depth + 1, variant)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict) and isinstance(part.get("$ref"), str):
                    part = self.resolve(part["$ref"])
                merged = _merge(merged, part)
            return self.value(merged, path, depth + 1, variant)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = _infer_type(schema)
        if kind == "object":
            return self.obj(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind in ("integer", "number"):
            return self.number(schema, path, kind == "integer", variant)
        if kind == "boolean":
            return variant % 2 == 0
        if kind == "null":
            return None
        return self.string(schema, path, variant)

    def obj(self, schema: dict, path: str, depth: int) -> dict:
        props = schema.get("properties")
        if not isinstance(props, dict):
            props = {}
        extra = schema.get("additionalProperties")
        listed = schema.get("required")
        names = list(dict.fromkeys(r for r in listed if isinstance(r, str))) if isinstance(listed, list) else []
        wanted = schema.get("minProperties")
        if isinstance(wanted, int):
            wanted = min(wanted, _MAX_COUNT)
            names += [p for p in props if p not in names][: max(0, wanted - len(names))]
        out = {}
        for name in names:
            sub = props.get(name, extra if isinstance(extra, dict) else {})
            out[name] = self.value(sub, f"{path}/{name}", depth + 1)
        k = 0
        while isinstance(wanted, int) and len(out) < wanted and extra is not False:
            out[f"extra_{k}"] = self.value(extra if isinstance(extra, dict) else {}, f"{path}/+{k}", depth + 1)
            k += 1
        return out

    def array(self, schema: dict, path: str, depth: int) -> list:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems")
        prefix = prefix if isinstance(prefix, list) else []
        low = schema.get("minItems")
        count = max(min(low, _MAX_COUNT) if isinstance(low, int) else 0, len(prefix), 1)
        high = schema.get("maxItems")
        if isinstance(high, int):
            count = min(count, high)
        if items is False:
            count = min(count, len(prefix))
        out = []
        for k in range(count):
            sub = prefix[k] if k < len(prefix) else (items if isinstance(items, dict) else {})
            out.append(self.value(sub, f"{path}/{k}", depth + 1, variant=k))
        return out

    def number(self, schema: dict, path: str, integer: bool, variant: int) -> int | float:
        step = 1 if integer else 0.5
        low = _num(schema.get("minimum"))
        high = _num(schema.get("maximum"))
        exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if exclusive_low is True and low is not None:  # draft 4: a flag on minimum
            low += step
        elif (bound := _num(exclusive_low)) is not None:
            low = bound + step if low is None else max(low, bound + step)
        if exclusive_high is True and high is not None:
            high -= step
        elif (bound := _num(exclusive_high)) is not None:
            high = bound - step if high is None else min(high, bound - step)
        if integer:
            low = math.ceil(low) if low is not None else None
            high = math.floor(high) if high is not None else None
        value: float = 1 + self.pick(path, 9) + variant
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        multiple = _num(schema.get("multipleOf"))
        if multiple and multiple > 0:
            value = math.ceil(value / multiple) * multiple
            if high is not None and value > high:
                value = math.floor(high / multiple) * multiple
        return int(round(value)) if integer else float(value)

    def string(self, schema: dict, path: str, variant: int) -> str:
        fmt = schema.get("format")
        value = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        if value is None:
            value = _WORDS[self.pick(path, len(_WORDS))]
        if variant:
            value = f"{value}{variant}" if value not in _FORMATS.values() else value
        low, high = schema.get("minLength"), schema.get("maxLength")
        if isinstance(low, int) and len(value) < low:
            value += "x" * (min(low, _MAX_LENGTH) - len(value))
        if isinstance(high, int) and len(value) > high:
            value = value[:high]
        return value


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _infer_type(schema: dict) -> str:
    if any(k in schema for k in ("properties", "required", "additionalProperties", "minProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")):
        return "number"
    return "string"


def _merge(a: dict, b: Any) -> dict:
    """``a`` and ``b`` as one schema (properties and required lists joined)."""
    if not isinstance(b, dict):
        return a
    out = {**a, **b}
    if isinstance(a.get("properties"), dict) and isinstance(b.get("properties"), dict):
        out["properties"] = {**a["properties"], **b["properties"]}
    if isinstance(a.get("required"), list) and isinstance(b.get("required"), list):
        out["required"] = list(dict.fromkeys(a["required"] + b["required"]))
    return out


def schema_instance(schema: Any, salt: str = "") -> Any:
    """A minimal instance of ``schema`` that validates against it (values vary with ``salt``).

    A schema it cannot satisfy (a contradiction, numbers out of float range) gets a best effort,
    never an exception: a constrained decoder would produce something, or fail the request."""
    try:
        return Instance(schema, salt).value(schema, "#")
    except (ArithmeticError, ValueError, TypeError, RecursionError):
        return {}


def dumps(value: Any) -> str:
    """JSON as Python's ``json.dumps`` writes it (vLLM serializes tool arguments with it)."""
    return json.dumps(value, ensure_ascii=False)
