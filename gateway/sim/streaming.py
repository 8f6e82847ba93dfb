"""Streaming a generation's choices as server-sent events, and noticing clients that leave.

``stream`` sends a request's SSE stream as the engine produces tokens (``Generation.stream``);
``DisconnectWatch`` aborts a request whose client went away, as vLLM's ``with_cancellation``.
"""

from __future__ import annotations

import asyncio

from .engine import FINISHED, Sequence
from .params import Sampling
from .sse import DONE, SSE_HEADERS


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


async def stream(
    gen,
    send,
    receive,
    seqs: list[Sequence],
    fmts: list,
    sampling: Sampling,
    fault=None,
    prompt_tokens: int | None = None,
) -> None:
    """Send the SSE stream of a request's choices: headers now, events as the engine produces tokens.

    Events that are ready together (the engine ran ahead of this writer) go out in one write.
    With ``n`` > 1 the role chunk of every choice comes first, then each choice's chunks as
    its tokens come (one choice per chunk, each with its own finish chunk), then the usage
    chunk with the tokens of all choices (``prompt_tokens``: the prompts' total, for a batch).
    """
    first = seqs[0]
    headers = SSE_HEADERS + gen.server.request_id_header(first.rid)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    watch = DisconnectWatch(receive, gen.engine, seqs)
    coalesce = gen.cfg.coalesce
    continuous = sampling.continuous_usage
    details = gen.usage_details()
    limit = fault.after_chunks if fault is not None else -1
    sent = [0] * len(seqs)
    single = len(seqs) == 1
    started = False
    events = 0
    try:
        while True:
            if first.error if single else any(seq.error for seq in seqs):
                message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
                body = gen.version.stream_error_event(message) + DONE
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
                        heads = (fmt.first_chunk(s.prompt_len if continuous else -1) for fmt, s in zip(fmts, seqs))
                        out += [c for c in heads if c is not None]
                    usage_prompt = seq.prompt_len if continuous else -1
                    out.extend(fmts[k].events(sent[k], produced, done, coalesce, usage_prompt))
                    sent[k] = produced
                finished = finished and done
            if finished and sampling.include_usage:
                total_prompt = first.prompt_len if prompt_tokens is None else prompt_tokens
                out.append(fmts[0].usage_chunk(total_prompt, sum(seq.n_out for seq in seqs), details))
            if limit >= 0 and events + len(out) + finished > limit:  # the fault strikes in this batch
                if limit > events:
                    body = b"".join(out[: limit - events])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                watch.cancel()
                await gen.server.midstream_fault(fault, send, receive, first)
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
                gen.engine.abort(seq)


async def _wait_any(seqs: list[Sequence]) -> None:
    """Wait until one of the sequences produces tokens or finishes (they share one waiter)."""
    pending = [seq for seq in seqs if seq.state != FINISHED]
    if pending:
        waiter = asyncio.get_running_loop().create_future()
        for seq in pending:
            seq.waiter = waiter
        await waiter
