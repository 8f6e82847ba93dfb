"""``POST /v1/responses`` (the OpenAI Responses API) as vLLM serves it, from 0.10.1 (the route is
absent before: 404 like an unknown route). Built on the chat generation (``chatbridge.py``).

- Request: ``input`` (a string, or message items whose content is a string or text parts;
  ``function_call`` / ``function_call_output`` items become the assistant's tool calls and tool
  messages), ``instructions`` (a system message), ``max_output_tokens``, ``temperature``,
  ``top_p``, ``reasoning.effort``, ``tools`` (function tools), ``tool_choice``, ``text.format``
  (json_schema / json_object: the chat ``response_format``), ``stream``, ``model`` (may be omitted).
- ``store`` is accepted and ignored (vLLM ignores it without ``VLLM_ENABLE_RESPONSES_API_STORE``),
  so ``previous_response_id`` always gets vLLM's 404 "Response with id '<id>' not found.".
- Answer: reasoning item (when the model reasoned), message item, function_call items; status
  ``incomplete`` with ``incomplete_details.reason = "max_output_tokens"`` when cut off.
- Stream: ``event: <type>`` / ``data: <json>`` with ``sequence_number`` from 0 and no ``[DONE]``;
  ``response.completed`` ends it even when the response is incomplete (as vLLM).

Approximations: ``output_tokens_details.reasoning_tokens`` is the reasoning text's token count;
``temperature`` / ``top_p`` echo the request (1.0 when absent; vLLM takes the model's generation
config); built-in (non-function) tools are refused with a 400.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from .chatbridge import ChatAnswer, Translator, run_chat, sse_event, stream_chat
from .params import ApiError, is_true
from .text import count_tokens


def _text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise ApiError(400, "A message's content must be a string or a list of content parts.")


def chat_messages(body: dict) -> list[dict]:
    messages: list[dict] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise ApiError(400, "Field required: input", "BadRequestError", "input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ApiError(400, "input must be a string or a list of input items", "BadRequestError", "input")
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(400, "Each input item must be an object", "BadRequestError", "input")
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments", "{}")}
            tool_call = {"id": item.get("call_id"), "type": "function", "function": call}
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": _text_of(item.get("output"))}
            )
        elif kind == "message" or "role" in item:
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ApiError(400, f"Unsupported role in input: {role!r}", "BadRequestError", "input")
            messages.append(
                {"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"))}
            )
        elif kind == "reasoning":
            continue  # earlier reasoning is not part of the next prompt
        else:
            raise ApiError(400, f"Unsupported input item type: {kind!r}", "BadRequestError", "input")
    return messages


def chat_request(body: dict) -> dict:
    """The chat request vLLM would run for this Responses request."""
    chat: dict[str, Any] = {"messages": chat_messages(body)}
    if body.get("model"):
        chat["model"] = body["model"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "seed"):
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    tools = body.get("tools")
    if tools:
        chat_tools = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else tool
                raise ApiError(
                    400, f"Tool type {kind!r} is not supported (function tools only).", "BadRequestError", "tools"
                )
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
            if tool.get("description") is not None:
                function["description"] = tool["description"]
            chat_tools.append({"type": "function", "function": function})
        chat["tools"] = chat_tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    return chat


def _hex() -> str:
    return os.urandom(16).hex()


def reasoning_item(text: str, item_id: str | None = None) -> dict:
    return {
        "id": item_id or "rs_" + _hex(),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "encrypted_content": None,
        "status": None,
    }


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": None}


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict:
    content = [output_text(text)] if status == "completed" else []
    return {
        "id": item_id or "msg_" + _hex(),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def function_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": "fc_" + _hex(),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class Shape:
    """The request-derived fields of a response object (what vLLM echoes back)."""

    def __init__(self, gen, body: dict) -> None:
        self.id = "resp_" + _hex()
        self.created = int(time.time())
        self.model = body.get("model") or gen.model_name
        self.body = body
        self.max_model_len = gen.cfg.max_model_len

    def response(self, status: str, output: list, usage: dict | None, prompt_tokens: int, finish: str | None) -> dict:
        body = self.body
        max_out = body.get("max_output_tokens")
        incomplete = status == "incomplete"
        return {
            "id": self.id,
            "created_at": self.created,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "metadata": body.get("metadata"),
            "model": self.model,
            "object": "response",
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature", 1.0),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "background": False,
            "max_output_tokens": max_out if max_out is not None else self.max_model_len - prompt_tokens,
            "max_tool_calls": None,
            "previous_response_id": None,
            "prompt": None,
            "reasoning": body.get("reasoning"),
            "service_tier": "auto",
            "status": status,
            "text": body.get("text") or {"format": {"type": "text"}},
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": usage,
            "user": body.get("user"),
            "store": body.get("store", True),
        }


def usage(prompt: int, completion: int, reasoning: int) -> dict:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def output_of(answer: ChatAnswer) -> list[dict]:
    out = []
    if answer.reasoning:
        out.append(reasoning_item(answer.reasoning))
    if answer.content or (answer.content is not None and not answer.tool_calls):
        out.append(message_item(answer.content))
    for call in answer.tool_calls:
        out.append(function_item(call["id"], call["function"]["name"], call["function"]["arguments"]))
    return out


class ResponseEvents(Translator):
    """The Responses API's stream events, from the chat stream."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.shape = shape
        self.seq = 0
        self.output: list[dict] = []
        self.open: dict | None = None  # the output item being written
        self.text = ""
        self.reasoning_tokens_text = ""

    def emit(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse_event(kind, data)

    def start(self) -> list[bytes]:
        snapshot = self.shape.response("in_progress", [], None, self.prompt_tokens, None)
        return [self.emit("response.created", response=snapshot), self.emit("response.in_progress", response=snapshot)]

    def _index(self) -> int:
        return len(self.output)

    def _close(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index, item_id, out = self._index(), item.get("id"), []
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": self.text}
            out.append(
                self.emit(
                    "response.reasoning_text.done", item_id=item_id, output_index=index, content_index=0, text=self.text
                )
            )
            out.append(
                self.emit(
                    "response.reasoning_part.done", item_id=item_id, output_index=index, content_index=0, part=part
                )
            )
            item = reasoning_item(self.text, item_id)
        elif item["type"] == "message":
            part = output_text(self.text)
            out.append(
                self.emit(
                    "response.output_text.done",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                )
            )
            out.append(
                self.emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
            )
            item = message_item(self.text, item_id)
        else:
            item = {**item, "arguments": self.text, "status": "completed"}
            out.append(
                self.emit(
                    "response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=self.text
                )
            )
        out.append(self.emit("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        self.text = ""
        return out

    def _open(self, item: dict) -> list[bytes]:
        out = self._close()
        self.open = item
        index, item_id = self._index(), item.get("id")
        part: dict[str, Any]
        out.append(self.emit("response.output_item.added", output_index=index, item=item))
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": ""}
            out.append(
                self.emit(
                    "response.reasoning_part.added", item_id=item_id, output_index=index, content_index=0, part=part
                )
            )
        elif item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(
                self.emit(
                    "response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part
                )
            )
        return out

    def reasoning(self, delta: str) -> list[bytes]:
        out = []
        if self.open is None or self.open["type"] != "reasoning":
            item = {"id": "rs_" + _hex(), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            out += self._open(item)
        self.text += delta
        self.reasoning_tokens_text += delta
        assert self.open is not None
        ids = {"item_id": self.open["id"], "output_index": self._index(), "content_index": 0}
        out.append(self.emit("response.reasoning_text.delta", **ids, delta=delta))
        return out

    def content(self, delta: str) -> list[bytes]:
        out = []
        if self.open is None or self.open["type"] != "message":
            out += self._open(message_item("", None, "in_progress"))
        self.text += delta
        assert self.open is not None
        ids = {"item_id": self.open["id"], "output_index": self._index(), "content_index": 0}
        out.append(self.emit("response.output_text.delta", **ids, delta=delta, logprobs=[]))
        return out

    def tool_call(self, call: dict) -> list[bytes]:
        out = []
        function = call.get("function") or {}
        if call.get("id") or self.open is None or self.open["type"] != "function_call":
            out += self._open(function_item(call.get("id") or "", function.get("name") or "", "", "in_progress"))
        args = function.get("arguments")
        if args:
            self.text += args
            assert self.open is not None
            ids = {"item_id": self.open["id"], "output_index": self._index()}
            out.append(self.emit("response.function_call_arguments.delta", **ids, delta=args))
        return out

    def finish(self, completion_tokens: int) -> list[bytes]:
        out = self._close()
        reasoning = count_tokens(self.reasoning_tokens_text) if self.reasoning_tokens_text else 0
        used = usage(self.prompt_tokens, completion_tokens, reasoning)
        final = self.shape.response(
            _status(self.finish_reason), self.output, used, self.prompt_tokens, self.finish_reason
        )
        out.append(self.emit("response.completed", response=final))
        return out

    def error(self, error: dict) -> list[bytes]:
        message = error.get("message", "")
        return [self.emit("error", code=str(error.get("code")), message=message, param=error.get("param"))]


async def handle(gen, scope: dict, receive, send, body: dict, fault=None) -> None:
    """Answer a Responses request (``gen``: the server's ``Generation``)."""
    gen.check_model(body)
    previous = body.get("previous_response_id")
    if previous:  # no response store (VLLM_ENABLE_RESPONSES_API_STORE unset): nothing to find
        raise ApiError(404, f"Response with id '{previous}' not found.", "invalid_request_error")
    chat = chat_request(body)
    shape = Shape(gen, body)
    if is_true(body.get("stream")):
        await stream_chat(gen, scope, receive, send, chat, fault, ResponseEvents(shape))
        return
    answer = await run_chat(gen, scope, receive, chat)
    if answer is None:
        return
    used = usage(answer.prompt_tokens, answer.completion_tokens, answer.reasoning_tokens)
    response = shape.response(_status(answer.finish_reason), output_of(answer), used, answer.prompt_tokens, None)
    await gen.server.send_json(send, 200, orjson.dumps(response), answer.rid, fault)
