"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``, shaped like vLLM's.

Request fields are read and checked by ``params.py``; the checks that need the server's
configuration (served model name, context length, tool choice, chat template) are steps of the
handlers here. Responses are built as vLLM serializes them: non-streaming with every field
(``null`` included); chat stream chunks with ``exclude_unset`` (unset fields absent); completion
stream chunks with every field; the usage chunk with ``exclude_none``. Streamed deltas carry the
tokens produced since the last event: one token per event while the reader keeps up, merged when it
lags (vLLM's output collector), unless the server runs with ``--no-coalesce``.

``n`` > 1: one engine sequence per choice (``submit_choices``), choice 0 identical to the ``n=1``
answer, the others from sub-seeds; usage adds up the choices. Tool calls are planned by
``tools.py`` (the model's text, then vLLM's parsers), structured outputs by ``structured.py``,
logprobs by ``logprobs.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson

from . import structured, text
from . import tools as toolcalls
from .engine import FINISHED, EngineDeadError, Sequence
from .logprobs import Logprobs
from .params import ApiError, Sampling, chat_logprobs, completion_logprobs, invalid, read_bool
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

    def __init__(self, receive, engine, seqs: list[Sequence]) -> None:
        self.task: asyncio.Task | None = None
        loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | None = loop.call_later(self.delay, self._start, receive, engine, seqs)

    def _start(self, receive, engine, seqs: list[Sequence]) -> None:
        self.handle = None
        if any(seq.state != FINISHED for seq in seqs):
            self.task = asyncio.get_running_loop().create_task(self._watch(receive, engine, seqs))

    @staticmethod
    async def _watch(receive, engine, seqs: list[Sequence]) -> None:
        await wait_disconnect(receive)
        for seq in seqs:
            engine.abort(seq)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.task is not None:
            self.task.cancel()


@dataclass
class Choice:
    """One choice of a request (``n`` > 1: several): what it generates and how vLLM reads it back."""

    plan: text.OutputPlan
    tool_mode: str | None = None  # hermes (tool_choice "auto") | named | required
    tool_name: str | None = None  # the named function
    logprobs: Logprobs | None = None

    def stream_finish_reason(self) -> str | None:
        """The finish reason of the stream's last chunk, where it is not the plan's: "tool_calls"
        once the parser saw a tool call (auto; vLLM streams it even when the call is cut off) or
        when a required call ended normally."""
        plan = self.plan
        if self.tool_mode == "hermes":
            produced = plan.texts(plan.content_start, plan.total)[1] if plan.total > plan.content_start else ""
            return "tool_calls" if toolcalls.HERMES_OPEN in produced else None
        if self.tool_mode == "required" and plan.finish_reason == "stop":
            return "tool_calls"
        return None


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

    def submit_choices(self, scope: dict, prompt_len: int, plans: list[text.OutputPlan], max_tokens_param: int | None):
        """One sequence per choice. ``n`` > 1: vLLM fans a request out into n child requests that
        decode side by side in the batch, as here. Approximation: vLLM's children share the
        prompt's KV blocks through the prefix cache; here each child prefills (and holds) the whole
        prompt, so the prompt part costs n times what it costs vLLM. The ground truth keeps a row
        per choice (choice k > 0 under ``<request id>/k``), and the engine metrics count each
        choice as a request, as vLLM's child requests are counted."""
        rid = _request_id(scope)
        seqs = []
        for k, plan in enumerate(plans):
            seq = Sequence(rid, prompt_len, plan.total, plan.finish_reason, max_tokens_param)
            if k:
                seq.key = f"{rid}/{k}"
            seqs.append(seq)
        try:
            for seq in seqs:
                self.engine.submit(seq)
        except EngineDeadError:
            raise EngineDead() from None
        return seqs

    async def wait_all(self, seqs: list[Sequence], receive) -> bool:
        """Wait for every choice of a non-streaming request; False if the client went away."""
        if len(seqs) == 1:
            return await self.wait_done(seqs[0], receive)
        loop = asyncio.get_running_loop()
        for seq in seqs:
            seq.done = loop.create_future()
        if all(seq.state == FINISHED for seq in seqs):
            return not any(seq.aborted for seq in seqs)
        watch = DisconnectWatch(receive, self.engine, seqs)
        try:
            for seq in seqs:
                if seq.state != FINISHED and seq.done is not None:
                    await seq.done
        finally:
            watch.cancel()
        if any(seq.error for seq in seqs):
            raise EngineDead()
        return not any(seq.aborted for seq in seqs)

    async def wait_done(self, seq: Sequence, receive) -> bool:
        """Wait for a non-streaming request; False if the client went away (the request was aborted)."""
        seq.done = asyncio.get_running_loop().create_future()
        if seq.state == FINISHED:
            return not seq.aborted
        watch = DisconnectWatch(receive, self.engine, [seq])
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

    def _plan_choice(
        self,
        k: int,
        prompt: str,
        digest: str,
        hint: str,
        messages: list,
        thinking: str | None,
        sampling: Sampling,
        max_tokens: int,
        tools: toolcalls.ToolChoice | None,
        out_format: structured.OutputFormat | None,
        top_logprobs: int | None,
    ) -> Choice:
        """Choice ``k``: choice 0 is what an ``n=1`` request gets, the others use sub-seeds."""
        request_seed: int | str | None = sampling.seed if k == 0 else f"{sampling.seed}/{k}"
        salt = f"{self.cfg.seed}/{request_seed}/{digest}"
        answer: list[str] | None = None
        mode = name = None
        if tools is not None and tools.mode == "named":
            mode, name = "named", tools.name
            tool = next(t for t in tools.tools if t.name == name)
            answer = toolcalls.named_pieces(toolcalls.tool_arguments(tool, salt))
        elif tools is not None and tools.mode == "required":
            mode = "required"
            picked = toolcalls.matching_tools(tools.tools, messages) or tools.tools[:1]
            calls = [(t.name, toolcalls.tool_arguments(t, f"{salt}/{i}")) for i, t in enumerate(picked)]
            answer = toolcalls.required_pieces(calls)
        elif out_format is not None:
            answer = text.tokenize(out_format.answer(self.cfg.seed, request_seed, prompt, hint, salt))
        elif tools is not None:  # "auto": a tool call when the user asks for something a tool does
            picked = toolcalls.matching_tools(tools.tools, messages)
            if picked:
                mode = "hermes"
                calls = [(t.name, toolcalls.tool_arguments(t, f"{salt}/{i}")) for i, t in enumerate(picked)]
                answer = toolcalls.hermes_pieces(calls)
        plan = text.plan_answer(
            prompt,
            seed=self.cfg.seed,
            request_seed=request_seed,
            max_tokens=max_tokens,
            thinking=thinking,
            hint_text=hint,
            stop=sampling.stop,
            min_tokens=sampling.min_tokens,
            ignore_eos=sampling.ignore_eos,
            answer=answer,
            blank_after_think=answer is None or mode == "hermes",
        )
        logprobs = Logprobs(plan, top_logprobs, f"{salt}/{k}") if top_logprobs is not None else None
        return Choice(plan, mode, name, logprobs)

    async def chat(self, scope: dict, receive, send, body: dict, fault=None) -> None:
        self.check_model(body)
        if self.cfg.task == "embed":
            raise ApiError(400, "The model does not support Chat Completions API")
        sampling = Sampling(body, "max_completion_tokens")
        auto = self.cfg.enable_auto_tool_choice and bool(self.cfg.tool_call_parser)
        tools = toolcalls.check_tools(body, self.version, auto)
        out_format = structured.output_format(body, self.version)
        top_logprobs = chat_logprobs(body, self.version.at_least(0, 16))
        prompt, thinking, hint = self.chat_prompt(body)
        prompt_len = text.count_tokens(prompt)
        max_tokens = self.resolve_max_tokens(prompt_len, sampling.max_tokens)
        digest = hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()
        messages, fmt, top = body["messages"], out_format, top_logprobs
        choices = [
            self._plan_choice(k, prompt, digest, hint, messages, thinking, sampling, max_tokens, tools, fmt, top)
            for k in range(sampling.n)
        ]
        parallel = tools.parallel if tools is not None else True
        include_reasoning = read_bool(body, "include_reasoning", True)
        seqs = self.submit_choices(scope, prompt_len, [c.plan for c in choices], sampling.max_tokens)
        rid = "chatcmpl-" + seqs[0].rid
        if sampling.stream:
            hide = not include_reasoning and self.version.hides_streamed_reasoning
            created = int(time.time())
            fmts = [
                ChatChunks(
                    rid,
                    self._model_json,
                    c.plan,
                    self.version.reasoning_fields,
                    hide,
                    index=k,
                    created=created,
                    finish_reason=c.stream_finish_reason(),
                    tools=toolcalls.ToolStream(c.tool_mode, c.tool_name, parallel) if c.tool_mode else None,
                    logprobs=c.logprobs,
                )
                for k, c in enumerate(choices)
            ]
            await self.stream(send, receive, seqs, fmts, sampling, fault)
            return
        if not await self.wait_all(seqs, receive):
            return
        out = [
            self._chat_choice(k, c, seq, thinking, include_reasoning, parallel)
            for k, (c, seq) in enumerate(zip(choices, seqs))
        ]
        tail = {"prompt_logprobs": None}
        if self.version.has_token_ids_fields:
            tail["prompt_token_ids"] = None
        await self._answer(send, seqs, rid, "chat.completion", out, tail, fault)

    def _chat_choice(
        self, k: int, c: Choice, seq: Sequence, thinking: str | None, include_reasoning: bool, parallel: bool
    ) -> dict:
        plan = c.plan
        reasoning, content = plan.texts(0, seq.n_out)
        finish_reason = seq.finish_reason
        content_out: str | None = content
        if thinking is not None and seq.n_out <= plan.content_start:  # cut off while thinking: no answer yet
            content_out = None
        calls: list[tuple[str, str]] = []
        if c.tool_mode is not None and content_out is not None:
            if c.tool_mode == "named":  # the content is the arguments; finish_reason stays (vLLM, as OpenAI)
                assert c.tool_name is not None
                calls, content_out = [(c.tool_name, content)], ""
            else:
                parsed = toolcalls.parse_calls(c.tool_mode, content)
                if parsed is not None:  # else the raw text is the answer (a call cut off by max_tokens)
                    content_out, calls = parsed
                    if c.tool_mode == "hermes" or finish_reason == "stop":
                        finish_reason = "tool_calls"
        if not parallel:
            calls = calls[:1]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content_out,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [
                {"id": toolcalls.new_tool_call_id(), "type": "function", "function": {"name": n, "arguments": a}}
                for n, a in calls
            ],
        }
        for field in self.version.reasoning_fields:
            message[field] = reasoning if thinking is not None and include_reasoning else None
        choice = {
            "index": k,
            "message": message,
            "logprobs": c.logprobs.chat(0, seq.n_out) if c.logprobs is not None else None,
            "finish_reason": finish_reason,
            "stop_reason": plan.stop_reason,
        }
        if self.version.has_token_ids_fields:
            choice["token_ids"] = None
        return choice

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
        top_logprobs = completion_logprobs(body, self.version.at_least(0, 16))
        out_format = structured.output_format(body, self.version)
        max_tokens = self.resolve_max_tokens(prompt_len, sampling.max_tokens)
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        plans, logprobs = [], []
        for k in range(sampling.n):
            request_seed: int | str | None = sampling.seed if k == 0 else f"{sampling.seed}/{k}"
            salt = f"{self.cfg.seed}/{request_seed}/{digest}"
            answer = None
            if out_format is not None:
                answer = text.tokenize(out_format.answer(self.cfg.seed, request_seed, key, key, salt))
            plan = text.plan_answer(
                key,
                seed=self.cfg.seed,
                request_seed=request_seed,
                max_tokens=max_tokens,
                hint_text=key,
                stop=sampling.stop,
                min_tokens=sampling.min_tokens,
                ignore_eos=sampling.ignore_eos,
                answer=answer,
            )
            plans.append(plan)
            logprobs.append(Logprobs(plan, top_logprobs, f"{salt}/{k}") if top_logprobs is not None else None)
        seqs = self.submit_choices(scope, prompt_len, plans, sampling.max_tokens)
        rid = "cmpl-" + seqs[0].rid
        if sampling.stream:
            created = int(time.time())
            fmts = [
                CompletionChunks(rid, self._model_json, plan, self.version, index=k, created=created, logprobs=lp)
                for k, (plan, lp) in enumerate(zip(plans, logprobs))
            ]
            await self.stream(send, receive, seqs, fmts, sampling, fault)
            return
        if not await self.wait_all(seqs, receive):
            return
        choices = []
        for k, (plan, lp, seq) in enumerate(zip(plans, logprobs, seqs)):
            choice = {
                "index": k,
                "text": plan.texts(0, seq.n_out)[1],
                "logprobs": lp.completion(0, seq.n_out, 0) if lp is not None else None,
                "finish_reason": seq.finish_reason,
                "stop_reason": plan.stop_reason,
                "prompt_logprobs": None,
            }
            if self.version.has_token_ids_fields:
                choice["prompt_token_ids"] = None
                choice["token_ids"] = None
            choices.append(choice)
        await self._answer(send, seqs, rid, "text_completion", choices, {}, fault)

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

    async def _answer(
        self, send, seqs: list[Sequence], rid: str, kind: str, choices: list[dict], tail: dict, fault
    ) -> None:
        """A non-streaming response, with every field vLLM's model_dump writes."""
        prompt_len = seqs[0].prompt_len
        completion = sum(seq.n_out for seq in seqs)
        response = {
            "id": rid,
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {
                "prompt_tokens": prompt_len,
                "total_tokens": prompt_len + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": None,
            },
            **tail,
            "kv_transfer_params": None,
        }
        await self.server.send_json(send, 200, orjson.dumps(response), seqs[0].rid, fault)

    # --- streaming ----------------------------------------------------------------------------
    async def stream(self, send, receive, seqs: list[Sequence], fmts: list, sampling: Sampling, fault=None) -> None:
        """Send the SSE stream of a request's choices: headers now, events as the engine produces tokens.

        Events that are ready together (the engine ran ahead of this writer) go out in one write.
        With ``n`` > 1 the role chunk of every choice comes first, then each choice's chunks as
        its tokens come (one choice per chunk, each with its own finish chunk), then the usage
        chunk with the tokens of all choices.
        """
        first = seqs[0]
        headers = SSE_HEADERS + self.server.request_id_header(first.rid)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        watch = DisconnectWatch(receive, self.engine, seqs)
        coalesce = self.cfg.coalesce
        usage_prompt = first.prompt_len if sampling.continuous_usage else -1
        limit = fault.after_chunks if fault is not None else -1
        sent = [0] * len(seqs)
        single = len(seqs) == 1
        started = False
        events = 0
        try:
            while True:
                if first.error if single else any(seq.error for seq in seqs):
                    message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
                    body = self.version.stream_error_event(message) + DONE
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if first.aborted if single else any(seq.aborted for seq in seqs):
                    return
                out: list[bytes] = []
                finished = True
                for k, seq in enumerate(seqs):
                    done = seq.state == FINISHED
                    produced = seq.n_out
                    if produced > sent[k]:
                        if not started:  # the first tokens: every choice's role chunk first
                            started = True
                            out += [c for c in (fmt.first_chunk(usage_prompt) for fmt in fmts) if c is not None]
                        out.extend(fmts[k].events(sent[k], produced, done, coalesce, usage_prompt))
                        sent[k] = produced
                    finished = finished and done
                if finished and sampling.include_usage:
                    out.append(fmts[0].usage_chunk(first.prompt_len, sum(seq.n_out for seq in seqs)))
                if limit >= 0 and events + len(out) + finished > limit:  # the fault strikes in this batch
                    if limit > events:
                        body = b"".join(out[: limit - events])
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    watch.cancel()
                    await self.server.midstream_fault(fault, send, receive, first)
                    return
                if finished:
                    out.append(DONE)
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})
                    return
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                    events += len(out)
                if single:
                    await first.wait()
                elif all(seq.n_out == sent[k] for k, seq in enumerate(seqs)):
                    await _wait_any(seqs)
        finally:
            watch.cancel()
            for seq in seqs:
                if seq.state != FINISHED:
                    self.engine.abort(seq)


async def _wait_any(seqs: list[Sequence]) -> None:
    """Wait until one of the sequences produces tokens or finishes (they share one waiter)."""
    pending = [seq for seq in seqs if seq.state != FINISHED]
    if pending:
        waiter = asyncio.get_running_loop().create_future()
        for seq in pending:
            seq.waiter = waiter
        await waiter
