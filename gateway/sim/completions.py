"""``/v1/completions``, shaped like vLLM's (the handler; ``generate.py`` shares its steps).

- ``prompt``: a string, a list of token ids, or a batch (a list of strings or of token-id lists):
  one engine request per prompt, ``n`` choices each, choices in prompt order (choice ``i * n + k``
  is sample ``k`` of prompt ``i``); usage adds up the prompts (each counted once) and the choices.
- Token-id prompts are checked against the vocabulary (``Token id N is out of vocabulary``); a
  missing or empty prompt gets vLLM's "Either prompt or prompt_embeds must be provided and
  non-empty." (0.16 wording; the schema error list before).
- ``echo``: the text (and, with ``logprobs``, the logprobs) start with the prompt's.
- ``prompt_logprobs`` (``logprobs.prompt_logprobs``), ``return_token_ids`` (``prompt_token_ids``
  on the choice, ``token_ids`` of the output), ``return_tokens_as_token_ids``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from . import structured, text
from .logprobs import Logprobs, echo_completion, prompt_logprobs
from .params import ApiError, Sampling, completion_logprobs, invalid, read_bool, vllm_error
from .params import prompt_logprobs as read_prompt_logprobs
from .sse import CompletionChunks

EMPTY_PROMPT = "Either prompt or prompt_embeds must be provided and non-empty."


@dataclass
class Prompt:
    """One prompt of a request: its text, token ids and pieces, and the key its answer is planned from."""

    text: str
    ids: list[int]
    pieces: list[str]
    key: str


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def read_prompts(body: dict, new_style: bool) -> list[Prompt]:
    """The request's prompts (one, or a batch), checked as vLLM checks them."""
    prompt = body.get("prompt")
    embeds = body.get("prompt_embeds")
    if prompt is None or prompt == []:
        if embeds:
            raise ApiError(400, "You must set `--enable-prompt-embeds` to input `prompt_embeds`.")
        raise vllm_error(new_style, EMPTY_PROMPT, None, body)
    if isinstance(prompt, str) or _is_ids(prompt):
        batch = [prompt]
    elif isinstance(prompt, list) and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        batch = prompt
    else:
        raise invalid("prompt", "Input should be a valid string or list of token ids", prompt, "string_type")
    out = []
    for p in batch:
        if isinstance(p, str):
            ids, pieces = text.encode(p)
            out.append(Prompt(p, ids, pieces, p))
            continue
        for t in p:
            if not 0 <= t < text.VOCAB_SIZE:
                raise ApiError(400, f"Token id {t} is out of vocabulary", "BadRequestError")
        pieces = [text.piece_of(t) for t in p]
        out.append(Prompt("".join(pieces), list(p), pieces, ",".join(map(str, p))))
    return out


async def handle(gen, scope: dict, receive, send, body: dict, fault=None) -> None:
    """Answer a completions request (``gen``: the server's ``Generation``)."""
    gen.check_model(body)
    cfg, version = gen.cfg, gen.version
    if cfg.task == "embed":
        raise ApiError(400, "The model does not support Completions API")
    if body.get("suffix") is not None:
        raise ApiError(400, "suffix is not currently supported")
    new_style = version.at_least(0, 16)
    sampling = Sampling(body, None, version, cfg.enable_force_include_usage)
    prompts = read_prompts(body, new_style)
    top_logprobs = completion_logprobs(body, new_style, cfg.max_logprobs)
    n_prompt_lp = read_prompt_logprobs(body, new_style, cfg.max_logprobs)
    echo = read_bool(body, "echo", False)
    token_ids = read_bool(body, "return_token_ids", False) and version.has_token_ids_fields
    as_ids = read_bool(body, "return_tokens_as_token_ids", False)
    out_format = structured.output_format(body, version)
    plans, logprobs, owners = [], [], []
    for i, prompt in enumerate(prompts):
        key = prompt.key
        max_tokens = gen.resolve_max_tokens(len(prompt.ids), sampling.max_tokens)
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        for k in range(sampling.n):
            request_seed: int | str | None = sampling.seed if k == 0 else f"{sampling.seed}/{k}"
            salt = f"{cfg.seed}/{request_seed}/{digest}"
            answer = None
            if out_format is not None:
                answer = text.tokenize(out_format.answer(cfg.seed, request_seed, key, key, salt))
            plan = text.plan_answer(
                key,
                seed=cfg.seed,
                request_seed=request_seed,
                max_tokens=max_tokens,
                hint_text=key,
                stop=sampling.stop,
                min_tokens=sampling.min_tokens,
                ignore_eos=sampling.ignore_eos,
                answer=answer,
            )
            plans.append(plan)
            lp = Logprobs(plan, top_logprobs, f"{salt}/{k}", as_ids) if top_logprobs is not None else None
            logprobs.append(lp)
            owners.append(i)
    seqs = gen.submit_choices(scope, [len(prompts[i].ids) for i in owners], plans, sampling.max_tokens, sampling.n)
    rid = "cmpl-" + seqs[0].rid
    prompt_total = sum(len(p.ids) for p in prompts)
    if sampling.stream:
        created = int(time.time())
        fmts = [
            CompletionChunks(
                rid,
                gen.model_json,
                plan,
                version,
                index=j,
                created=created,
                logprobs=lp,
                echo=_echo_part(prompts[i], lp, top_logprobs, as_ids) if echo else None,
                prompt_ids=prompts[i].ids if token_ids else None,
            )
            for j, (plan, lp, i) in enumerate(zip(plans, logprobs, owners))
        ]
        await gen.stream(send, receive, seqs, fmts, sampling, fault, prompt_total)
        return
    if not await gen.wait_all(seqs, receive):
        return
    choices = []
    for j, (plan, lp, i, seq) in enumerate(zip(plans, logprobs, owners, seqs)):
        prompt = prompts[i]
        out_text = plan.texts(0, seq.n_out)[1]
        lp_json = lp.completion(0, seq.n_out, len(prompt.text) if echo else 0) if lp is not None else None
        if echo:
            out_text = prompt.text + out_text
            if lp_json is not None:
                head = echo_completion(prompt.pieces, prompt.ids, top_logprobs or 0, prompt.key, as_ids)
                lp_json = {name: head[name] + lp_json[name] for name in lp_json}
        choice = {
            "index": j,
            "text": out_text,
            "logprobs": lp_json,
            "finish_reason": seq.finish_reason,
            "stop_reason": plan.stop_reason,
            "prompt_logprobs": (
                prompt_logprobs(prompt.pieces, prompt.ids, n_prompt_lp, prompt.key) if n_prompt_lp is not None else None
            ),
        }
        if version.has_token_ids_fields:
            choice["prompt_token_ids"] = prompt.ids if token_ids else None
            choice["token_ids"] = plan.token_ids(0, seq.n_out) if token_ids else None
        choices.append(choice)
    await gen.answer(send, seqs, rid, "text_completion", choices, {}, fault, prompt_total)


def _echo_part(prompt: Prompt, lp: Logprobs | None, top: int | None, as_ids: bool) -> tuple[str, dict | None]:
    """What a streamed completion's first event carries with ``echo``: the prompt text (and logprobs)."""
    head = echo_completion(prompt.pieces, prompt.ids, top or 0, prompt.key, as_ids) if lp is not None else None
    return prompt.text, head
