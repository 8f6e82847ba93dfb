"""Tool calls as vLLM serves them: the request checks, what the model writes, and how vLLM's
parsers read it back (structured outputs are ``structured.py``).

Request checks follow ``ChatCompletionRequest.check_tool_usage`` and ``validate_response_format``
(vllm/entrypoints/openai/chat_completion/protocol.py) and the ``"auto"`` check of the chat
server. What is called:

- ``tool_choice: "auto"`` (needs ``--enable-auto-tool-choice --tool-call-parser NAME``): the
  simulated model calls the tools whose name or description shares a word (4+ letters, not a
  stop word) with the last message when that message is the user's, up to three (parallel
  calls), else it answers in text. A last message from a tool gets a text answer, so agent
  loops end. The model writes Hermes blocks, ``<tool_call>\\n{"name": …, "arguments": …}\\n
  </tool_call>``, whatever ``--tool-call-parser`` says (the name only changes the raw format,
  which the client never sees); vLLM's parser turns them into ``tool_calls``, ``content`` is
  the text before the first block (``null`` when empty) and ``finish_reason`` is
  ``"tool_calls"``.
- ``"required"``: a grammar makes the model write ``[{"name": …, "parameters": …}, …]`` (the
  tools ``"auto"`` would pick, else the first one); ``content`` is ``""``, ``finish_reason``
  ``"tool_calls"``. Works without the auto flags.
- a named function: the grammar makes the model write the arguments object alone; ``content``
  is ``""`` and ``finish_reason`` stays ``"stop"`` (vLLM: "tool_calls" for auto or required,
  "stop" for named tool calls, as OpenAI). Works without the auto flags.
- ``parallel_tool_calls: false``: the model still writes every call it planned (the tokens
  count), vLLM returns the first (``maybe_filter_parallel_tool_calls``).

A tool call's id is ``chatcmpl-tool-`` and 32 hex digits. Arguments are a minimal instance of
the tool's ``parameters`` schema (``schema_instance``), serialized as ``json.dumps`` does (vLLM
re-serializes parsed arguments with it). Structured outputs (``response_format`` json_object /
json_schema, ``structured_outputs.json|choice``, the older ``guided_json|guided_choice``)
make the content a JSON object, an instance of the schema, or one of the choices; a named or
required tool choice takes precedence over them, and they take precedence over ``"auto"``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from . import text
from .params import ApiError, invalid, read_bool, vllm_error
from .schema import dumps, schema_instance

# --- tools: the request -----------------------------------------------------------------------

_STOP_WORDS = frozenset(
    {
        "about", "after", "also", "from", "have", "into", "just", "like", "more", "some", "than", "that",
        "their", "them", "then", "there", "these", "they", "this", "what", "when", "where", "which", "will",
        "with", "would", "your", "does", "make", "made", "tool", "tools", "function", "call", "calls", "given",
        "using", "used", "uses", "value", "values", "return", "returns",
    }
)  # fmt: skip
_WORD_RE = re.compile(r"[a-z0-9]+")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass
class Tool:
    name: str
    description: str
    parameters: Any


@dataclass
class ToolChoice:
    """A request's tools and how they may be called: mode ``auto``, ``required`` or ``named``."""

    tools: list[Tool]
    mode: str
    name: str | None
    parallel: bool


def _tools(raw: list) -> list[Tool]:
    tools = []
    for k, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            message = "A tool needs a 'function' object with a string 'name'"
            raise invalid(f"tools.{k}.function", message, item, "missing")
        if item.get("type", "function") != "function":
            raise invalid(f"tools.{k}.type", "Input should be 'function'", item.get("type"), "literal_error")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            loc = f"tools.{k}.function.parameters"
            raise invalid(loc, "Input should be a valid dictionary", parameters, "dict_type")
        description = function.get("description")
        tools.append(Tool(function["name"], description if isinstance(description, str) else "", parameters))
    return tools


def check_tools(body: dict, version, auto_enabled: bool) -> ToolChoice | None:
    """Validate ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` as vLLM does; None when no
    tool can be called (no tools, ``tool_choice: "none"``)."""
    new_style = version.at_least(0, 16)
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise invalid("tools", "Input should be a valid list", raw, "list_type")
    if raw == [] and version.at_least(0, 20):  # PR #39780 (April 2026)
        raise vllm_error(
            True,
            "`tools` must not be an empty array. Either provide at least one tool or omit the field entirely.",
            "tools",
            body,
        )
    parallel = read_bool(body, "parallel_tool_calls", True)
    choice = body.get("tool_choice", "auto" if raw else "none")
    if choice == "none":
        return None
    if choice is None:  # an explicit null: the auto path where it is enabled, plain text otherwise
        if raw and auto_enabled:
            return ToolChoice(_tools(raw), "auto", None, parallel)
        return None
    if raw is None:
        raise vllm_error(new_style, "When using `tool_choice`, `tools` must be set.", "tool_choice", body)
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise vllm_error(
            new_style,
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or "required" are supported.',
            "tool_choice",
            body,
        )
    if choice == "required" and raw == []:  # before 0.20: an empty list turns "required" into "none"
        return None
    tools = _tools(raw)
    name = None
    if isinstance(choice, dict):
        usage = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
        function = choice.get("function")
        if not isinstance(function, dict):
            raise vllm_error(
                new_style,
                f"Invalid value for `function`: `{function}` in `tool_choice`! {usage}",
                "tool_choice.function",
                body,
            )
        if "name" not in function:
            raise vllm_error(
                new_style,
                f"Expected field `name` in `function` in `tool_choice`! {usage}",
                "tool_choice.function.name",
                body,
            )
        name = function["name"]
        if not isinstance(name, str) or not name:
            raise vllm_error(
                new_style,
                f"Invalid `name` in `function`: `{name}` in `tool_choice`! {usage}",
                "tool_choice.function.name",
                body,
            )
        if not any(t.name == name for t in tools):
            raise vllm_error(
                new_style,
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
                body,
            )
    if choice == "auto" and not auto_enabled:
        raise ApiError(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    if not tools:
        return None
    mode = "named" if name is not None else str(choice)
    return ToolChoice(tools, mode, name, parallel)


def _words(value: str) -> set[str]:
    return {w for w in _WORD_RE.findall(_CAMEL_RE.sub(" ", value).lower()) if len(w) >= 4 and w not in _STOP_WORDS}


def matching_tools(tools: list[Tool], messages: list) -> list[Tool]:
    """The tools the simulated model decides to call: those sharing a word with the last message,
    if the user sent it (at most three, in the order given)."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return []
    try:
        said = _words(text.message_text(messages[-1].get("content")))
    except text.TemplateError:
        return []
    picked = [t for t in tools if said & (_words(t.name.replace("_", " ")) | _words(t.description))]
    return picked[:3]


def tool_arguments(tool: Tool, salt: str) -> dict:
    schema = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    combined = ("$ref", "anyOf", "oneOf", "allOf")
    if isinstance(schema, dict) and "type" not in schema and not any(k in schema for k in combined):
        schema = {**schema, "type": "object"}
    value = schema_instance(schema, salt)
    return value if isinstance(value, dict) else {}


def new_tool_call_id() -> str:
    return "chatcmpl-tool-" + os.urandom(16).hex()


# --- tools: what the model writes, and vLLM's parsers -----------------------------------------

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"


def hermes_pieces(calls: list[tuple[str, dict]]) -> list[str]:
    pieces: list[str] = []
    for k, (name, args) in enumerate(calls):
        if k:
            pieces.append("\n")
        pieces += [HERMES_OPEN, "\n", *text.tokenize(dumps({"name": name, "arguments": args})), "\n", HERMES_CLOSE]
    return pieces


def required_pieces(calls: list[tuple[str, dict]]) -> list[str]:
    return text.tokenize(dumps([{"name": name, "parameters": args} for name, args in calls]))


def named_pieces(args: dict) -> list[str]:
    return text.tokenize(dumps(args))


_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]+)"')
_KEY_RE = {key: re.compile(rf'"{key}"\s*:\s*') for key in ("arguments", "parameters")}


def _json_value(raw: str) -> tuple[str, bool]:
    """The JSON value at the start of ``raw`` by brace matching (strings skipped): (text, complete)."""
    if not raw or raw[0] not in "{[":
        return raw, False
    close = "}" if raw[0] == "{" else "]"
    depth, in_string, escaped = 0, False, False
    for i, c in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == raw[0]:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return raw[: i + 1], True
    return raw, False


def _scan(region: str, key: str) -> list[tuple[str, str | None]]:
    """Calls readable so far in ``region``: (name, arguments text so far or None)."""
    calls: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        m = _NAME_RE.search(region, pos)
        if m is None:
            return calls
        a = _KEY_RE[key].search(region, m.end())
        if a is None:
            calls.append((m.group(1), None))
            return calls
        value, complete = _json_value(region[a.end() :])
        calls.append((m.group(1), value))
        if not complete:
            return calls
        pos = a.end() + len(value)


def partial_calls(mode: str, content: str) -> tuple[str, list[tuple[str, str | None]]]:
    """What a streaming parser can read from the content so far: (plain text, calls)."""
    if mode == "required":
        return "", _scan(content, "parameters")
    start = content.find(HERMES_OPEN)
    if start < 0:
        return content, []
    calls: list[tuple[str, str | None]] = []
    for region in content[start:].split(HERMES_OPEN)[1:]:
        found = _scan(region.split(HERMES_CLOSE)[0], "arguments")
        calls += found[:1]
        if not found:
            break
    return content[:start], calls


_HERMES_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def parse_calls(mode: str, content: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    """vLLM's non-streaming extraction: (content, [(name, arguments)]), or None when the output
    does not parse (the raw text is then the answer)."""
    try:
        if mode == "required":
            items = json.loads(content)
            return "", [(item["name"], dumps(item["parameters"])) for item in items]
        if HERMES_OPEN not in content:
            return None
        calls = []
        for match in _HERMES_RE.findall(content):
            call = json.loads(match[0] or match[1])
            calls.append((call["name"], dumps(call["arguments"])))
        before = content[: content.find(HERMES_OPEN)]
        return before or None, calls
    except (ValueError, KeyError, TypeError):
        return None


class ToolStream:
    """One choice's tool-call deltas, diffed against what was sent (vLLM's streaming parsers)."""

    __slots__ = ("mode", "name", "parallel", "ids", "sent_args", "sent_text", "started")

    def __init__(self, mode: str, name: str | None, parallel: bool) -> None:
        self.mode, self.name, self.parallel = mode, name, parallel
        self.ids: list[str] = []
        self.sent_args: list[int] = []
        self.sent_text = 0  # named: argument characters sent; hermes: plain-text characters sent
        self.started = False

    def delta(self, content: str) -> tuple[str, list[dict]]:
        """(new plain text, tool-call deltas) once the content so far is ``content``."""
        if self.mode == "named":
            new = content[self.sent_text :]
            self.sent_text = len(content)
            if not self.started:
                if not new:
                    return "", []
                self.started = True
                call_id = new_tool_call_id()
                self.ids.append(call_id)
                return "", [
                    {"id": call_id, "type": "function", "index": 0, "function": {"name": self.name, "arguments": new}}
                ]
            return "", [{"index": 0, "function": {"arguments": new}}] if new else []
        plain, calls = partial_calls(self.mode, content)
        new_text = plain[self.sent_text :]
        self.sent_text = len(plain)
        deltas: list[dict] = []
        for k, (name, args) in enumerate(calls):
            if k >= len(self.sent_args):
                call_id = new_tool_call_id()
                self.ids.append(call_id)
                self.sent_args.append(0)
                deltas.append({"id": call_id, "type": "function", "index": k, "function": {"name": name}})
            if args and len(args) > self.sent_args[k]:
                deltas.append({"index": k, "function": {"arguments": args[self.sent_args[k] :]}})
                self.sent_args[k] = len(args)
        if not self.parallel:
            deltas = [d for d in deltas if d["index"] == 0]
        return new_text, deltas

    @property
    def called(self) -> bool:
        return bool(self.ids)
