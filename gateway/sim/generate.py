"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``, shaped like vLLM's.

Request fields are read and checked by ``params.py``; the checks that need the server's
configuration (served model name, context length, tool choice, chat template) are steps of the
handlers here. Responses are built as vLLM serializes them: non-streaming with every field
(``null`` included); chat stream chunks with ``exclude_unset`` (unset fields absent); completion
stream chunks with every field; the usage chunk with ``exclude_none``. Streamed deltas carry the
tokens produced since the last event: one token per event while the reader keeps up, merged when it
lags (vLLM's output collector), unless the server runs with ``--no-coalesce``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from typing import Any

import orjson

from . import text
from .engine import FINISHED, EngineDeadError, Sequence
from .params import ApiError, Sampling, invalid, read_bool
from .sse import DONE, SSE_HEADERS, ChatChunks, CompletionChunks

JSON_HEADERS = [(b"content-type", b"application/json")]


class EngineDead(ApiError):
    """vLLM answers ``EngineDeadError`` with a bare 500 (no body)."""

    def __init__(self) -> None:
        super().__init__(500, "")


def _request_id(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")
    return os.urandom(16).hex()


async def wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """vLLM's ``with_cancellation``: abort the request when its client goes away.

    The watching task starts only if the request is still running after ``delay`` seconds, so a
    request the (instant) engine finishes at once costs a timer, not a task.
    """

    __slots__ = ("handle", "task")
    delay = 0.01

    def __init__(self, receive, engine, seq: Sequence) -> None:
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = loop.call_later(self.delay, self._start, receive, engine, seq)

    def _start(self, receive, engine, seq: Sequence) -> None:
        self.handle = None
        if seq.state != FINISHED:
            self.task = asyncio.get_running_loop().create_task(self._watch(receive, engine, seq))

    @staticmethod
    async def _watch(receive, engine, seq: Sequence) -> None:
        await wait_disconnect(receive)
        engine.abort(seq)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.task is not None:
            self.task.cancel()


class Generation:
    """The three generation endpoints of one simulated server."""

    def __init__(self, server) -> None:
        self.server = server
        self.engine = server.engine
        self.cfg = server.cfg
        self.version = server.version
        self.model_name = server.cfg.served_model_names[0]
        self._model_json = orjson.dumps(self.model_name)

    # --- shared steps -------------------------------------------------------------------------
    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model and model not in self.cfg.served_model_names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")

    def resolve_max_tokens(self, prompt_len: int, requested: int | None) -> int:
        limit = self.cfg.max_model_len
        if prompt_len >= limit or (requested is not None and prompt_len + requested > limit):
            message, param = self.version.context_length_error(prompt_len, requested, limit)
            raise ApiError(400, message, "BadRequestError", param)
        return requested if requested is not None else limit - prompt_len

    def submit(self, scope: dict, prompt_len: int, plan: text.OutputPlan | None, max_tokens_param: int | None):
        if plan is None:
            seq = Sequence(_request_id(scope), prompt_len, 0, "stop", embed=True)
        else:
            seq = Sequence(_request_id(scope), prompt_len, plan.total, plan.finish_reason, max_tokens_param)
        try:
            return self.engine.submit(seq)
        except EngineDeadError:
            raise EngineDead() from None

    async def wait_done(self, seq: Sequence, receive) -> bool:
        """Wait for a non-streaming request; False if the client went away (the request was aborted)."""
        seq.done = asyncio.get_running_loop().create_future()
        if seq.state == FINISHED:
            return not seq.aborted
        watch = DisconnectWatch(receive, self.engine, seq)
        try:
            await seq.done
        finally:
            watch.cancel()
        if seq.error:
            raise EngineDead()
        return not seq.aborted

    # --- chat ---------------------------------------------------------------------------------
    def chat_prompt(self, body: dict) -> tuple[str, str | None, str]:
        """Render the chat template; returns (prompt, thinking mode, hint text)."""
        messages = body.get("messages")
        if messages is None:
            raise invalid("messages", "Field required", body, "missing")
        if not isinstance(messages, list):
            raise invalid("messages", "Input should be a valid list", messages, "list_type")
        hint = []
        soft_switch = None
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise invalid("messages", "Each message needs a string 'role'", m, "model_type")
            if m["role"] in ("user", "system"):
                content = m.get("content")
                if isinstance(content, str):
                    hint.append(content)
                    if "/no_think" in content or "/think" in content:
                        soft_switch = content.rfind("/no_think") >= content.rfind("/think")
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise invalid("chat_template_kwargs", "Input should be a valid dictionary", kwargs, "dict_type")
        effort = body.get("reasoning_effort")
        allowed = self.version.reasoning_efforts
        if effort is not None and effort not in allowed:
            order = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
            names = [f"'{e}'" for e in order if e in allowed]
            expected = ", ".join(names[:-1]) + " or " + names[-1]
            raise invalid("reasoning_effort", f"Input should be {expected}", effort, "literal_error")
        thinking, prefix = None, ""
        parser = self.cfg.reasoning
        if parser == "deepseek_r1":
            thinking, prefix = "deepseek_r1", "<think>\n"
        elif parser == "qwen3":
            enable = kwargs.get("enable_thinking", True)
            if "enable_thinking" not in kwargs and effort is not None and self.version.effort_none_disables_thinking:
                enable = effort != "none"
            if enable is False:  # the Qwen3 template tests `enable_thinking is false`
                prefix = "<think>\n\n</think>\n\n"
            else:
                thinking = "empty" if soft_switch else "qwen3"
        try:
            prompt = text.render_chat(
                messages,
                add_generation_prompt=read_bool(body, "add_generation_prompt", True),
                continue_final_message=read_bool(body, "continue_final_message", False),
                tools=body.get("tools") or None,
                generation_prefix=prefix,
            )
        except text.TemplateError as e:
            raise ApiError(400, str(e)) from None
        return prompt, thinking, "\n".join(hint)

    def _check_tools(self, body: dict) -> None:
        tools = body.get("tools")
        choice = body.get("tool_choice", "auto" if tools else "none")
        if tools is not None and not isinstance(tools, list):
            raise invalid("tools", "Input should be a valid list", tools, "list_type")
        if choice == "auto" and tools and not self.cfg.enable_auto_tool_choice:
            raise ApiError(
                400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
            )
        if choice not in ("none", "auto", None):
            raise ApiError(400, "The simulated model does not call tools; use tool_choice 'none' or 'auto'.")

    async def chat(self, scope: dict, receive, send, body: dict, fault=None) -> None:
        self.check_model(body)
        if self.cfg.task == "embed":
            raise ApiError(400, "The model does not support Chat Completions API")
        sampling = Sampling(body, "max_completion_tokens")
        self._check_tools(body)
        prompt, thinking, hint = self.chat_prompt(body)
        prompt_len = text.count_tokens(prompt)
        max_tokens = self.resolve_max_tokens(prompt_len, sampling.max_tokens)
        plan = text.plan_answer(
            prompt,
            seed=self.cfg.seed,
            request_seed=sampling.seed,
            max_tokens=max_tokens,
            thinking=thinking,
            hint_text=hint,
            stop=sampling.stop,
            min_tokens=sampling.min_tokens,
            ignore_eos=sampling.ignore_eos,
        )
        include_reasoning = read_bool(body, "include_reasoning", True)
        seq = self.submit(scope, prompt_len, plan, sampling.max_tokens)
        rid = "chatcmpl-" + seq.rid
        if sampling.stream:
            hide = not include_reasoning and self.version.hides_streamed_reasoning
            fmt = ChatChunks(rid, self._model_json, plan, self.version.reasoning_fields, hide)
            await self.stream(send, receive, seq, fmt, sampling, fault)
            return
        if not await self.wait_done(seq, receive):
            return
        reasoning, content = plan.texts(0, seq.n_out)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
        }
        if thinking is not None:
            if seq.n_out <= plan.content_start:  # cut off while thinking: no answer yet
                message["content"] = None
            for field in self.version.reasoning_fields:
                message[field] = reasoning if include_reasoning else None
        else:
            for field in self.version.reasoning_fields:
                message[field] = None
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": plan.stop_reason,
        }
        tail = {"prompt_logprobs": None}
        if self.version.has_token_ids_fields:
            choice["token_ids"] = None
            tail["prompt_token_ids"] = None
        await self._answer(send, seq, rid, "chat.completion", choice, tail, fault)

    # --- completions --------------------------------------------------------------------------
    async def completions(self, scope: dict, receive, send, body: dict, fault=None) -> None:
        self.check_model(body)
        if self.cfg.task == "embed":
            raise ApiError(400, "The model does not support Completions API")
        if body.get("suffix") is not None:
            raise ApiError(400, "suffix is not currently supported")
        sampling = Sampling(body, None)
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid("prompt", "Field required", body, "missing")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            prompt_len = text.count_tokens(prompt)
            key = prompt
        elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            prompt_len = len(prompt)
            key = ",".join(map(str, prompt))
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(400, "The simulator takes one prompt per request.")
        else:
            raise invalid("prompt", "Input should be a valid string or list of token ids", prompt, "string_type")
        max_tokens = self.resolve_max_tokens(prompt_len, sampling.max_tokens)
        plan = text.plan_answer(
            key,
            seed=self.cfg.seed,
            request_seed=sampling.seed,
            max_tokens=max_tokens,
            hint_text=key,
            stop=sampling.stop,
            min_tokens=sampling.min_tokens,
            ignore_eos=sampling.ignore_eos,
        )
        seq = self.submit(scope, prompt_len, plan, sampling.max_tokens)
        rid = "cmpl-" + seq.rid
        if sampling.stream:
            fmt = CompletionChunks(rid, self._model_json, plan, self.version)
            await self.stream(send, receive, seq, fmt, sampling, fault)
            return
        if not await self.wait_done(seq, receive):
            return
        choice = {
            "index": 0,
            "text": plan.texts(0, seq.n_out)[1],
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": plan.stop_reason,
            "prompt_logprobs": None,
        }
        if self.version.has_token_ids_fields:
            choice["prompt_token_ids"] = None
            choice["token_ids"] = None
        await self._answer(send, seq, rid, "text_completion", choice, {}, fault)

    # --- embeddings ---------------------------------------------------------------------------
    async def embeddings(self, scope: dict, receive, send, body: dict, fault=None) -> None:
        self.check_model(body)
        if self.cfg.task != "embed":
            raise ApiError(400, "The model does not support Embeddings API")
        inputs = body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(type(t) is int for t in inputs)):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) or (isinstance(i, list) and all(type(t) is int for t in i)) for i in inputs)
        ):
            raise invalid("input", "Input should be a string, a list of strings or of token ids", inputs, "string_type")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise invalid("encoding_format", "Input should be 'float' or 'base64'", encoding, "literal_error")
        if body.get("dimensions") is not None:
            raise ApiError(
                400,
                "Model does not support matryoshka representation, changing output dimensions "
                "will lead to poor results.",
            )
        lengths = [text.count_tokens(i) if isinstance(i, str) else len(i) for i in inputs]
        for n in lengths:
            if n > self.cfg.max_model_len:
                message, param = self.version.context_length_error(n, None, self.cfg.max_model_len)
                raise ApiError(400, message, "BadRequestError", param)
        seq = self.submit(scope, sum(lengths), None, None)
        if not await self.wait_done(seq, receive):
            return
        data = []
        for index, item in enumerate(inputs):
            vector = text.embedding_vector(item if isinstance(item, str) else repr(item), self.cfg.embedding_dim)
            value: str | list[float]
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                value = vector
            data.append({"index": index, "object": "embedding", "embedding": value})
        response = {
            "id": "embd-" + seq.rid,
            "object": "list",
            "created": int(time.time()),
            "model": self.model_name,
            "data": data,
            "usage": {
                "prompt_tokens": seq.prompt_len,
                "total_tokens": seq.prompt_len,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
        await self.server.send_json(send, 200, orjson.dumps(response), seq.rid, fault)

    async def _answer(self, send, seq: Sequence, rid: str, kind: str, choice: dict, tail: dict, fault) -> None:
        """A non-streaming response, with every field vLLM's model_dump writes."""
        response = {
            "id": rid,
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {
                "prompt_tokens": seq.prompt_len,
                "total_tokens": seq.prompt_len + seq.n_out,
                "completion_tokens": seq.n_out,
                "prompt_tokens_details": None,
            },
            **tail,
            "kv_transfer_params": None,
        }
        await self.server.send_json(send, 200, orjson.dumps(response), seq.rid, fault)

    # --- streaming ----------------------------------------------------------------------------
    async def stream(self, send, receive, seq: Sequence, fmt, sampling: Sampling, fault=None) -> None:
        """Send the SSE stream of ``seq``: headers now, events as the engine produces tokens.

        Events that are ready together (the engine ran ahead of this writer) go out in one write.
        """
        headers = SSE_HEADERS + self.server.request_id_header(seq.rid)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watch = DisconnectWatch(receive, self.engine, seq)
        coalesce = self.cfg.coalesce
        usage_prompt = seq.prompt_len if sampling.continuous_usage else -1
        limit = fault.after_chunks if fault is not None else -1
        sent = events = 0
        try:
            while True:
                if seq.error:
                    message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
                    body = self.version.stream_error_event(message) + DONE
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if seq.aborted:
                    return
                finished = seq.state == FINISHED
                produced = seq.n_out
                out = list(fmt.events(sent, produced, finished, coalesce, usage_prompt)) if produced > sent else []
                sent = produced
                if finished and sampling.include_usage:
                    out.append(fmt.usage_chunk(seq.prompt_len, produced))
                if limit >= 0 and events + len(out) + finished > limit:  # the fault strikes in this batch
                    if limit > events:
                        body = b"".join(out[: limit - events])
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    watch.cancel()
                    await self.server.midstream_fault(fault, send, receive, seq)
                    return
                if finished:
                    out.append(DONE)
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})
                    return
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                    events += len(out)
                await seq.wait()
        finally:
            watch.cancel()
            if seq.state != FINISHED:
                self.engine.abort(seq)
