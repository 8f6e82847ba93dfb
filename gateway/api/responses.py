"""OpenAI's Responses API (``POST /v1/responses``), served through the chat completions path.

A Responses request is translated into a chat completions request and goes the way every chat
request goes (policy, routing, the reasoning switch of the model's family, caps, budgets,
failover, energy); the answer is translated back, unary or as the Responses stream events the
``openai`` SDK parses (``response.created`` ... ``response.completed``, ``event:`` lines, no
``[DONE]``). The energy of the request is in ``usage.energy``, as on the chat path.

Why not forward to vLLM's own ``/v1/responses``: vLLM has it only since ~0.10.1 and for text
models, and the gateway would then need a second copy of everything it does to a chat request
(the per-family reasoning switch, caps, counting reasoning tokens, energy from running usage).
What the translation cannot give is refused with a clear 400, never dropped silently: state kept
between requests (``previous_response_id``, ``conversation``, ``background``) and hosted tools
(web search, file search, code interpreter, ...). ``store`` is accepted and the answer says
``"store": false``: nothing is kept.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import orjson

from gateway.api.dialect import ChatStreamReader, listed
from gateway.context import RequestContext, request_id
from gateway.errors import GatewayError
from gateway.proxy.forward import StreamEnd

# Fields of a Responses request handed to the chat request unchanged (vLLM's sampling extras too).
_SAME = ("model", "temperature", "top_p", "user", "parallel_tool_calls", "top_logprobs", "seed",
         "chat_template_kwargs", "top_k", "min_p", "repetition_penalty", "service_tier")  # fmt: skip
# Fields that need state or hosted services the gateway does not have.
_STATEFUL = ("previous_response_id", "conversation", "background", "prompt")


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_request_error" if param is None else None)


def _text_parts(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A Responses message's content as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("A message's content must be a string or a list of content parts.", param)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise _bad(f"Content parts of type {kind!r} are not supported here.", f"{param}[{i}].type")
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("'input' must be a string or a non-empty list of input items.", "input")
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad("Each input item must be an object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"Unknown role {role!r}.", f"{param}.role")
            content = _text_parts(item.get("content"), f"{param}.content")
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning, handed back: the chat template drops it too
        else:
            raise _bad(f"Input items of type {kind!r} are not supported here.", f"{param}.type")
    return messages


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(listed(body, "tools")):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _bad(f"Tools of type {kind!r} (hosted tools) are not available through this gateway; "
                       "only function tools are.", f"tools[{i}].type")  # fmt: skip
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": function})
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request that does what a Responses request asks, or a 400."""
    for name in _STATEFUL:
        if body.get(name) not in (None, False):
            raise _bad(f"'{name}' needs state the gateway does not keep; send the whole conversation in "
                       "'input' instead.", name)  # fmt: skip
    chat: dict[str, Any] = {k: body[k] for k in _SAME if k in body}
    chat["messages"] = _messages(body)
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _bad("'max_output_tokens' must be a positive integer.", "max_output_tokens")
        chat["max_tokens"] = limit
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    tools = _tools(body)
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice is not None:
            chat["tool_choice"] = choice
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = chat_usage.get("prompt_tokens") or 0
    completion = chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": chat_usage.get("total_tokens") or prompt + completion,
    }
    if "energy" in chat_usage:
        out["energy"] = chat_usage["energy"]
    return out


class ResponsesAnswer(ChatStreamReader):
    """One request's answer in the Responses shape, from the chat answer or stream."""

    api: ClassVar[str] = "responses"
    @staticmethod
    def upstream(body: dict[str, Any]) -> dict[str, Any]:
        return to_chat(body)

    @staticmethod
    def error_body(err: GatewayError) -> bytes:
        return err.encode()  # OpenAI's error shape, as for chat

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__()
        self.body = body
        self.id = f"resp_{request_id()}"
        self.created = int(time.time())
        self.model = body.get("model") or ""
        # the stream's state
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the output item being streamed
        self.tool_items: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item

    # ------------------------------------------------------------------ the response object

    def response(self, status: str, usage: dict[str, Any] | None, nudges: list[dict[str, Any]] | None) -> dict:
        body = self.body
        asked = body.get("reasoning")
        reasoning: dict[str, Any] = asked if isinstance(asked, dict) else {}
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "error": None, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model, "output": self.output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": False, "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": usage, "user": body.get("user"), "metadata": body.get("metadata") or {},
        }  # fmt: skip
        if nudges:
            out["nudges"] = nudges
        return out

    def unary(self, payload: dict[str, Any], usage: Any, nudges: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The Responses answer for a unary chat completion ``payload`` (``usage`` as completed)."""
        self.model = payload.get("model") or self.model
        choices = payload.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if reasoning:
            self.output.append(self._reasoning_item(reasoning, "completed"))
        if message.get("content") is not None:
            self.output.append(self._message_item(message["content"], "completed"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            self.output.append(self._call_item(call.get("id"), function.get("name"), function.get("arguments", ""),
                                               "completed"))  # fmt: skip
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        return self.response(status, _usage(usage), nudges)

    def _reasoning_item(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "reasoning", "id": f"rs_{request_id()}", "summary": [], "status": status,
                "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip

    def _message_item(self, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": f"msg_{request_id()}", "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}  # fmt: skip

    def _call_item(self, call_id: Any, name: Any, arguments: str, status: str) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{request_id()}", "call_id": call_id, "name": name,
                "arguments": arguments, "status": status}  # fmt: skip

    # ------------------------------------------------------------------ the stream

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        data = orjson.dumps({"type": kind, "sequence_number": self.seq - 1, **fields})
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def start(self, ctx: RequestContext) -> bytes:
        """The stream's first events, sent with the response head."""
        self.model = ctx.model or self.model
        snapshot = self.response("in_progress", None, None)
        return self._event("response.created", response=snapshot) + self._event("response.in_progress",
                                                                                  response=snapshot)  # fmt: skip

    def _open_item(self, item: dict[str, Any]) -> list[bytes]:
        out = self._close_item()
        self.output.append(item)
        self.open = item
        index = len(self.output) - 1
        out.append(self._event("response.output_item.added", output_index=index, item=_in_progress(item)))
        if item["type"] in ("message", "reasoning"):
            part = {"type": "output_text", "text": "", "annotations": []} if item["type"] == "message" else \
                {"type": "reasoning_text", "text": ""}  # fmt: skip
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                   content_index=0, part=part))  # fmt: skip
        return out

    def _close_item(self) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = "completed"
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=part["text"], logprobs=[]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=part))  # fmt: skip
        elif item["type"] == "reasoning":
            part = item["content"][0]
            out.append(self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=part["text"]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=part))  # fmt: skip
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"]))  # fmt: skip
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def on_reasoning(self, text: str) -> list[bytes]:
        out = [] if self.open is not None and self.open["type"] == "reasoning" else \
            self._open_item(self._reasoning_item("", "in_progress"))  # fmt: skip
        item = self.open
        assert item is not None
        item["content"][0]["text"] += text
        out.append(self._event("response.reasoning_text.delta", item_id=item["id"], output_index=len(self.output) - 1,
                               content_index=0, delta=text))  # fmt: skip
        return out

    def on_text(self, text: str) -> list[bytes]:
        out = [] if self.open is not None and self.open["type"] == "message" else \
            self._open_item(self._message_item("", "in_progress"))  # fmt: skip
        item = self.open
        assert item is not None
        item["content"][0]["text"] += text
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=len(self.output) - 1,
                               content_index=0, delta=text, logprobs=[]))  # fmt: skip
        return out

    def on_tool_call(self, index: int, call_id: Any, name: Any, arguments: str) -> list[bytes]:
        out: list[bytes] = []
        item = self.tool_items.get(index)
        if item is None:
            item = self.tool_items[index] = self._call_item(call_id, name, "", "in_progress")
            out += self._open_item(item)
        if arguments:
            item["arguments"] += arguments
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=self.output.index(item), delta=arguments))  # fmt: skip
        return out

    def error(self, error: dict[str, Any]) -> list[bytes]:
        return [self._event("error", code=str(error.get("code")), message=error.get("message", ""),
                            param=error.get("param"))]  # fmt: skip

    def end(self, ctx: RequestContext, end: StreamEnd, nudges: list[dict[str, Any]] | None) -> bytes:
        """The usage is known (and the API has settled it): the rest, and ``response.completed``."""
        out = [self.feed(end.before)]
        if end.held is not None:
            out.append(self.feed(end.held))
        out += self._close_item()
        status = "incomplete" if self.finish == "length" else "completed"
        final = self.response(status, _usage(ctx.usage), nudges)
        # response.completed even when cut short (its status says so), as vLLM does: the openai SDK's
        # get_final_response() waits for that event alone
        out.append(self._event("response.completed", response=final))
        return b"".join(out)


def _in_progress(item: dict[str, Any]) -> dict[str, Any]:
    """An item as ``output_item.added`` shows it: no content yet."""
    shown = dict(item)
    if item["type"] in ("message", "reasoning"):
        shown["content"] = []
    return shown
