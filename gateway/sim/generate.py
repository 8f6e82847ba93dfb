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

from . import completions, streaming, structured, text
from . import tools as toolcalls
from .engine import FINISHED, EngineDeadError, Sequence
from .extras import ChatExtras
from .logprobs import Logprobs
from .params import ApiError, Sampling, chat_logprobs, invalid, read_bool
from .sse import ChatChunks
from .streaming import DisconnectWatch

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
        self.model_json = orjson.dumps(self.model_name)

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

    def submit_choices(
        self,
        scope: dict,
        prompt_lens: int | list[int],
        plans: list[text.OutputPlan],
        max_tokens_param: int | None,
        n: int | None = None,
    ):
        """One sequence per choice. ``n`` > 1: vLLM fans a request out into n child requests that
        decode side by side in the batch, as here. Approximation: vLLM's children share the
        prompt's KV blocks through the prefix cache; here each child prefills (and holds) the whole
        prompt, so the prompt part costs n times what it costs vLLM. The ground truth keeps a row
        per choice (choice k > 0 under ``<request id>/k``), and the engine metrics count each
        choice as a request, as vLLM's child requests are counted. ``prompt_lens``: one length, or
        one per choice (a completions batch); ``n``: choices per prompt (``vllm:request_params_n``)."""
        rid = _request_id(scope)
        lens = prompt_lens if isinstance(prompt_lens, list) else [prompt_lens] * len(plans)
        seqs = []
        for k, (plan, prompt_len) in enumerate(zip(plans, lens)):
            seq = Sequence(rid, prompt_len, plan.total, plan.finish_reason, max_tokens_param)
            if k:
                seq.key = f"{rid}/{k}"
            seqs.append(seq)
        try:
            for seq in seqs:
                self.engine.submit(seq)
        except EngineDeadError:
            raise EngineDead() from None
        n = n or len(plans)
        self.engine.metrics.request_params_n.observe(n, len(plans) // n)
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
        sampling = Sampling(body, "max_completion_tokens", self.version, self.cfg.enable_force_include_usage)
        auto = self.cfg.enable_auto_tool_choice and bool(self.cfg.tool_call_parser)
        tools = toolcalls.check_tools(body, self.version, auto)
        out_format = structured.output_format(body, self.version)
        top_logprobs = chat_logprobs(body, self.version.at_least(0, 16), self.cfg.max_logprobs)
        extras = ChatExtras(body, self.version, self.cfg.max_logprobs)
        prompt, thinking, hint = self.chat_prompt(body)
        prompt_len = text.count_tokens(prompt)
        max_tokens = self.resolve_max_tokens(prompt_len, sampling.max_tokens)
        digest = hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()
        messages, fmt, top = body["messages"], out_format, top_logprobs
        choices = [
            self._plan_choice(k, prompt, digest, hint, messages, thinking, sampling, max_tokens, tools, fmt, top)
            for k in range(sampling.n)
        ]
        if extras.as_ids:
            for c in choices:
                if c.logprobs is not None:
                    c.logprobs.as_ids = True
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
                    self.model_json,
                    c.plan,
                    self.version.reasoning_fields,
                    hide,
                    index=k,
                    created=created,
                    finish_reason=c.stream_finish_reason(),
                    tools=toolcalls.ToolStream(c.tool_mode, c.tool_name, parallel) if c.tool_mode else None,
                    logprobs=c.logprobs,
                    echo=extras.echo_text(body, messages),
                    token_ids=extras.token_ids,
                    prompt_ids=extras.prompt_ids(prompt) if k == 0 else None,
                )
                for k, c in enumerate(choices)
            ]
            await self.stream(send, receive, seqs, fmts, sampling, fault)
            return
        if not await self.wait_all(seqs, receive):
            return
        out = [
            self._chat_choice(k, c, seq, thinking, include_reasoning, parallel, extras)
            for k, (c, seq) in enumerate(zip(choices, seqs))
        ]
        echo = extras.echo_text(body, messages)
        if echo:
            for choice in out:
                if choice["message"]["content"] is not None:
                    choice["message"]["content"] = echo + choice["message"]["content"]
        tail = {"prompt_logprobs": extras.prompt_logprobs(prompt)}
        if self.version.has_token_ids_fields:
            tail["prompt_token_ids"] = extras.prompt_ids(prompt)
        await self.answer(send, seqs, rid, "chat.completion", out, tail, fault)

    def _chat_choice(
        self,
        k: int,
        c: Choice,
        seq: Sequence,
        thinking: str | None,
        include_reasoning: bool,
        parallel: bool,
        extras: ChatExtras,
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
            choice["token_ids"] = plan.token_ids(0, seq.n_out) if extras.token_ids else None
        return choice

    # --- completions --------------------------------------------------------------------------
    async def completions(self, scope: dict, receive, send, body: dict, fault=None) -> None:
        await completions.handle(self, scope, receive, send, body, fault)

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

    def usage_details(self, cached_tokens: int = 0) -> dict | None:
        """``prompt_tokens_details``: with ``--enable-prompt-tokens-details``, and only when
        prompt tokens came from the prefix cache (vLLM tests ``num_cached_tokens``' truth); the
        simulator has no prefix cache, so never."""
        return {"cached_tokens": cached_tokens} if self.cfg.enable_prompt_tokens_details and cached_tokens else None

    async def answer(
        self,
        send,
        seqs: list[Sequence],
        rid: str,
        kind: str,
        choices: list[dict],
        tail: dict,
        fault,
        prompt_tokens: int | None = None,
    ) -> None:
        """A non-streaming response, with every field vLLM's model_dump writes (``prompt_tokens``:
        the prompts' total where it is not the first choice's prompt)."""
        prompt_len = seqs[0].prompt_len if prompt_tokens is None else prompt_tokens
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
                "prompt_tokens_details": self.usage_details(),
            },
            **tail,
            "kv_transfer_params": None,
        }
        await self.server.send_json(send, 200, orjson.dumps(response), seqs[0].rid, fault)

    # --- streaming ----------------------------------------------------------------------------
    async def stream(
        self,
        send,
        receive,
        seqs: list[Sequence],
        fmts: list,
        sampling: Sampling,
        fault=None,
        prompt_tokens: int | None = None,
    ) -> None:
        """Send the SSE stream of a request's choices (``streaming.stream``)."""
        await streaming.stream(self, send, receive, seqs, fmts, sampling, fault, prompt_tokens)
