"""Structured outputs as vLLM serves them: ``response_format`` json_object / json_schema,
``structured_outputs.json|regex|choice|grammar`` and the older ``guided_*`` make the content a
JSON object, an instance of the schema (``schema.py``), a string the regex matches
(``regexgen.py``), or one of the choices; checked as ``validate_response_format`` does
(vllm/entrypoints/openai/chat_completion/protocol.py), and refused (400) where vLLM's grammar
backend cannot compile them: a schema with a subschema that is not one, a regex that does not
compile, an EBNF grammar with undefined rules. A grammar is accepted but does not shape the text.
A named or required tool choice takes precedence over them (``tools.py``), and they over ``"auto"``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import text
from .params import ApiError, invalid, vllm_error
from .regexgen import grammar_error, regex_error, regex_instance
from .schema import Instance, dumps, schema_instance

# --- structured outputs -----------------------------------------------------------------------


@dataclass
class OutputFormat:
    kind: str  # json_object | json_schema | choice | regex
    schema: Any = None
    choices: list | None = None
    regex: str | None = None

    def answer(self, seed: int, request_seed: int | str | None, prompt: str, hint: str, salt: str) -> str:
        if self.kind == "json_schema":
            return dumps(schema_instance(self.schema, salt))
        if self.kind == "regex":
            assert self.regex is not None
            return regex_instance(self.regex, salt)
        if self.kind == "choice":
            assert self.choices
            return str(self.choices[Instance(None, salt).pick("choice", len(self.choices))])
        return dumps({"answer": text.content_sample(seed, request_seed, prompt, hint, 60)})


def _schema_arg(value: Any, loc: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise invalid(loc, "Invalid JSON schema", value, "value_error") from None
    if not isinstance(value, dict):
        raise invalid(loc, "Input should be a valid dictionary", value, "dict_type")
    problem = schema_error(value)
    if problem is not None:
        raise ApiError(400, f"The provided JSON schema is invalid: {problem}", "BadRequestError")
    return value


_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def schema_error(schema: Any, path: str = "#") -> str | None:
    """What makes ``schema`` not a JSON schema (a subschema that is neither an object nor a
    boolean, an unknown type), or None."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{path} is not a schema (an object or a boolean): {schema!r}"
    kind = schema.get("type")
    for name in kind if isinstance(kind, list) else [kind] if kind is not None else []:
        if name not in _TYPES:
            return f"{path}/type: unknown type {name!r}"
    for key in _SCHEMA_MAPS:
        sub = schema.get(key)
        if sub is not None:
            if not isinstance(sub, dict):
                return f"{path}/{key} must be an object"
            for name, value in sub.items():
                problem = schema_error(value, f"{path}/{key}/{name}")
                if problem:
                    return problem
    for key in _SCHEMA_ONE:
        if key in schema and not (key == "items" and isinstance(schema[key], list)):
            problem = schema_error(schema[key], f"{path}/{key}")
            if problem:
                return problem
    for key in _SCHEMA_LISTS:
        for i, value in enumerate(schema.get(key) or []):
            problem = schema_error(value, f"{path}/{key}/{i}")
            if problem:
                return problem
    return None


def output_format(body: dict, version) -> OutputFormat | None:
    """The structured output a request asks for, checked as vLLM checks it."""
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict):
            message = "Input should be a valid dictionary or object"
            raise invalid("response_format", message, rf, "model_attributes_type")
        kind = rf.get("type")
        if kind == "json_object":
            return OutputFormat("json_object")
        if kind == "json_schema":
            spec = rf.get("json_schema")
            if spec is None:
                raise vllm_error(
                    version.at_least(0, 16),
                    "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
                    "response_format",
                    body,
                )
            if not isinstance(spec, dict):
                raise invalid("response_format.json_schema", "Input should be a valid dictionary", spec, "dict_type")
            if not isinstance(spec.get("name"), str):
                raise invalid("response_format.json_schema.name", "Field required", spec, "missing")
            schema = spec.get("schema")
            if schema is None:
                return OutputFormat("json_object")
            if not isinstance(schema, dict):
                loc = "response_format.json_schema.schema"
                raise invalid(loc, "Input should be a valid dictionary", schema, "dict_type")
            return OutputFormat("json_schema", schema)
        if kind in ("text", "structural_tag"):
            return None
        raise invalid(
            "response_format.type", "Input should be 'text', 'json_object' or 'json_schema'", kind, "literal_error"
        )
    so = body.get("structured_outputs")
    if so is not None:
        if not isinstance(so, dict):
            raise invalid("structured_outputs", "Input should be a valid dictionary", so, "dict_type")
        count = sum(so.get(k) is not None for k in ("json", "regex", "choice", "grammar"))
        if count > 1:
            raise vllm_error(
                version.at_least(0, 16),
                "You can only use one kind of constraints for structured outputs ('json', 'regex' or 'choice').",
                None,
                body,
            )
        if count and isinstance(body.get("tool_choice"), dict):
            raise vllm_error(
                version.at_least(0, 16),
                "You can only either use constraints for structured outputs or tools, not both.",
                None,
                body,
            )
        return _constraint(so.get("json"), so.get("choice"), so.get("regex"), so.get("grammar"), "structured_outputs")
    json_, choice, regex, grammar = (body.get(f"guided_{kind}") for kind in ("json", "choice", "regex", "grammar"))
    return _constraint(json_, choice, regex, grammar, "guided_json")


def _constraint(schema: Any, choices: Any, regex: Any, grammar: Any, loc: str) -> OutputFormat | None:
    if regex is not None:
        if not isinstance(regex, str):
            raise invalid(f"{loc}.regex", "Input should be a valid string", regex, "string_type")
        problem = regex_error(regex)
        if problem is not None:
            raise ApiError(400, problem, "BadRequestError")
        return OutputFormat("regex", regex=regex)
    if grammar is not None:
        problem = grammar_error(grammar)
        if problem is not None:
            raise ApiError(400, problem, "BadRequestError")
        return None
    if schema is not None:
        return OutputFormat("json_schema", _schema_arg(schema, loc))
    if choices is not None:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise invalid(loc, "Input should be a non-empty list of strings", choices, "list_type")
        return OutputFormat("choice", choices=choices)
    return None
