"""Send a request to a vLLM backend, failing over before the first byte, and relay the answer.

Rules (FACTS.md, vLLM's own behaviour):
- every attempt gets a fresh ``X-Request-Id`` (vLLM uses it as its request id);
- a backend that refuses the connection or answers 5xx before any byte reached the client
  is skipped and the next healthy backend serving the model is tried; never after;
- closing the upstream response (client gone, deadline) closes its connection, which is
  how vLLM learns to abort the request and stop spending GPU time on it;
- streamed events are forwarded as they arrive, one ASGI send per upstream read, without
  buffering more than one incomplete event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.context import DEFERRED_TIERS, RequestContext
from gateway.errors import GatewayError, normalise
from gateway.proxy import sse
from gateway.proxy.backends import Backend
from gateway.proxy.client import Client, Response

log = logging.getLogger("gateway.proxy")

_JSON_HEADERS = {"content-type": "application/json"}
_POST = b"POST"


class AttemptHooks(Protocol):
    def sent(self, ctx: RequestContext) -> None: ...  # an attempt is about to go to ctx.backend
    def failed(self, ctx: RequestContext) -> None: ...  # that attempt failed before any answer


class Upstream:
    """An open 2xx upstream response: a unary answer (``answer``) or a stream (``relay``).

    ``close()`` lets go of it: an unfinished answer drops its TCP connection, which makes vLLM
    abort the request; a finished one keeps its connection for the next request.
    """

    __slots__ = ("response", "backend", "deferred", "status", "first", "body", "closed")

    def __init__(self, response: Response, backend: Backend, deferred: bool = False):
        self.response = response
        self.backend = backend
        self.deferred = deferred  # a deferrable request's (counted in Backend.deferred)
        self.status = response.status
        self.first = b""  # a stream's first bytes, read before committing to this backend
        self.body: bytes | None = None  # a unary answer, read whole before committing to it
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.response.release()
            self.backend.closed(self.deferred)

    async def answer(self, ctx: RequestContext) -> dict[str, Any]:
        """The unary answer as a JSON object (``ctx.usage`` and the reasoning text noted), or
        GatewayError 502 when the backend failed while sending it or sent something else."""
        try:
            raw = self.body if self.body is not None else await self.response.read()
            payload = orjson.loads(raw) if raw else None
        except (TimeoutError, ValueError) as exc:
            raise GatewayError(
                502, f"The backend sent an unreadable answer: {exc}", code="bad_upstream_response"
            ) from exc
        except Exception as exc:  # the backend died mid-body (Disconnected, ProtocolError, OSError...)
            raise GatewayError(502, f"The backend failed while answering: {exc}", code="bad_upstream_response") from exc
        ctx.first_byte = time.monotonic()
        if not isinstance(payload, dict):
            raise GatewayError(
                502, "The backend sent an answer that is not a JSON object.", code="bad_upstream_response"
            )
        ctx.usage = payload.get("usage")
        if ctx.endpoint == "chat":
            for choice in payload.get("choices") or ():
                message = choice.get("message") if isinstance(choice, dict) else None
                if isinstance(message, dict):
                    sse.both_reasoning_names(message)
                    if message.get("reasoning"):
                        ctx.reasoning_parts.append(message["reasoning"])
        return payload


async def _upstream_error(upstream: Upstream) -> GatewayError:
    """An upstream error answer in OpenAI's shape, with its status; the upstream is closed."""
    try:
        raw = await upstream.response.read()
        payload: Any = orjson.loads(raw) if raw else None
    except (ValueError, OSError):  # the client's errors are OSErrors
        payload = None
    finally:
        upstream.close()
    err = normalise(upstream.status, payload)["error"]
    return GatewayError(upstream.status, err["message"], code=err["code"], param=err["param"], type=err["type"])


class Proxy:
    def __init__(
        self,
        session_factory: Callable[[], aiohttp.ClientSession],
        connect_timeout_s: float,
        request_timeout_s: float,
        metrics=None,
        hooks: AttemptHooks | None = None,
    ):
        self._session_factory = session_factory
        self.session: aiohttp.ClientSession | None = None  # side calls (/tokenize)
        self.client: Client | None = None  # the hot path (see gateway.proxy.client)
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics
        self.hooks = hooks
        self._attempts: dict[tuple[str, str], Any] = {}  # metric children, by (backend, result)

    async def start(self) -> None:
        self.session = self._session_factory()
        self.client = Client(self.connect_timeout_s)

    async def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.session is not None:
            await self.session.close()

    def _count(self, backend: Backend, result: str) -> None:
        if self.metrics is not None:
            child = self._attempts.get((backend.name, result))
            if child is None:
                child = self._attempts[(backend.name, result)] = self.metrics.upstream_attempts.labels(
                    backend.name, result
                )
            child.inc()

    async def open(
        self, ctx: RequestContext, backends: list[Backend], path: str, body: bytes, stream: bool = False,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> Upstream:  # fmt: skip
        """POST ``body`` to the first backend that answers; fail over on refusal or 5xx.
        ``extra_headers`` go with every attempt (the trace context, when tracing is on).

        Nothing has reached the client until this returns, so any failure up to here is
        safe to retry elsewhere: a refused connection, a 5xx, a connection that dies while
        vLLM generates or sends a unary answer (read whole here), or a stream that dies
        before its first event.
        Returns the open response (2xx or 4xx). Raises GatewayError 502/503 when every
        backend failed, with ``retry-after`` so clients back off.
        """
        client = self.client
        assert client is not None
        if not backends:
            raise GatewayError(
                503,
                f"No healthy backend serves {ctx.model!r} right now.",
                code="backend_unavailable",
                headers={"retry-after": "2"},
            )
        last: GatewayError | None = None
        deferred = ctx.service_tier in DEFERRED_TIERS
        for backend in backends:
            ctx.attempts += 1
            ctx.backend = backend.name
            ctx.upstream_request_id = f"{ctx.request_id}-{ctx.attempts}"
            headers = [("content-type", "application/json"), ("x-request-id", ctx.upstream_request_id), *extra_headers]
            if backend.config.api_key:
                headers.append(("authorization", f"Bearer {backend.config.api_key}"))
            ctx.sent = time.monotonic()
            if self.hooks is not None:
                self.hooks.sent(ctx)
            backend.opened(deferred)
            try:
                response = await client.pool(backend.url).request(_POST, path, headers, body, self.request_timeout_s)
                first = b""
                whole = None
                if stream and response.status == 200:
                    first = await response.readany()
                    if not first:
                        response.close()
                        raise aiohttp.ServerDisconnectedError("stream closed before its first event")
                elif response.status == 200:
                    whole = await response.read()  # a backend dying mid-body can still be replaced
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                backend.closed(deferred)
                if self.hooks is not None:
                    self.hooks.failed(ctx)
                if not isinstance(exc, asyncio.TimeoutError):
                    # nobody listening, or it dropped the connection mid-answer: down until its
                    # /health says otherwise, so that a re-route (another tier) does not pick it again
                    backend.mark_down(f"{exc.__class__.__name__}: {exc}")
                self._count(backend, "connect_error")
                last = GatewayError(
                    503,
                    f"Backend {backend.name} could not be reached.",
                    code="backend_unreachable",
                    headers={"retry-after": "1"},
                )
                continue
            except BaseException:
                backend.closed(deferred)
                raise
            upstream = Upstream(response, backend, deferred)
            upstream.first = first
            upstream.body = whole
            if response.status >= 500:
                last = await _upstream_error(upstream)
                if self.hooks is not None:
                    self.hooks.failed(ctx)
                self._count(backend, f"http_{response.status}")
                if response.status == 503:
                    backend.mark_down("answered 503")
                last.headers.setdefault("retry-after", "1")
                continue
            if response.status >= 400:  # the request itself was refused: the same on any backend
                self._count(backend, f"http_{response.status}")
                raise await _upstream_error(upstream)
            self._count(backend, "ok")
            return upstream
        assert last is not None
        if last.code == "backend_unreachable":  # nobody answered at all
            last.status, last.message = 503, f"No backend serving {ctx.model!r} could be reached."
        elif last.status != 503:
            last.status = 502  # a backend answered 5xx: the gateway got a bad answer
        last.type = "server_error"
        raise last

    async def count_reasoning(self, ctx: RequestContext, backend: Backend) -> None:
        """``ctx.reasoning_tokens``: vLLM reports none, so the reasoning text relayed is counted
        with the backend's own tokenizer."""
        ctx.reasoning_tokens = await self.count_tokens(backend, ctx.model, ["".join(ctx.reasoning_parts)])

    async def count_tokens(self, backend: Backend, model: str, texts: list[str]) -> int:
        """Exact token count from the backend's /tokenize (vLLM reports no reasoning_tokens).

        Falls back to ~4 characters per token if the backend cannot tokenize.
        """
        assert self.session is not None
        total = 0
        timeout = aiohttp.ClientTimeout(total=5)
        for text in texts:
            payload = orjson.dumps({"model": model, "prompt": text, "add_special_tokens": False})
            try:
                async with self.session.post(
                    f"{backend.url}/tokenize",
                    data=payload,
                    headers={**_JSON_HEADERS, **backend.auth_headers()},
                    timeout=timeout,
                ) as response:
                    if response.status == 200:
                        total += int(orjson.loads(await response.read()).get("count", 0))
                        continue
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                pass
            total += len(text) // 4
        return total


class StreamEnd:
    """The read of a stream in which its usage became known (the usage chunk, or ``[DONE]``
    without one). The API settles the request there (energy, policy feedback) and sends
    ``tail(...)``, all in one write: the events before that point in the read, the held-back
    finish chunk with the nudges added, the usage chunk if the client asked for it (with the
    usage the API completed), and the events after it in the same read (``[DONE]``)."""

    __slots__ = ("before", "held", "usage_chunk", "after")

    def __init__(self, before: bytes, held: bytes | None, usage_chunk: dict[str, Any] | None) -> None:
        self.before, self.held, self.usage_chunk = before, held, usage_chunk
        self.after = b""

    def tail(self, ctx: RequestContext, nudges: list[dict[str, Any]] | None) -> bytes:
        out = [self.before] if self.before else []
        held = self.held
        if held is not None:
            if nudges:
                chunk = sse.decode(held)
                chunk["nudges"] = nudges
                held = sse.encode(chunk)
            out.append(held)
        usage_chunk = self.usage_chunk
        if usage_chunk is not None and ctx.include_usage:
            usage_chunk["usage"] = ctx.usage
            if nudges:
                usage_chunk["nudges"] = nudges
            out.append(sse.encode(usage_chunk))
        out.append(self.after)
        return b"".join(out)


async def relay(ctx: RequestContext, upstream: Upstream) -> AsyncGenerator[bytes | StreamEnd, None]:
    """An upstream SSE stream as what to send the client: bytes as they arrive, and one
    ``StreamEnd`` where the usage becomes known.

    The gateway always asks upstream for the usage chunk. The last chunk that carries a
    ``finish_reason`` is held back until the usage chunk arrives, so that the API (which
    computes energy and nudges once usage is known) can attach ``nudges`` to it. Events the
    gateway has nothing to change in pass through as they came (no JSON round trip).

    A backend that fails mid-stream ends the stream with an error event and ``[DONE]``
    (``ctx.upstream_error`` says so); a stream that stops early (client gone, backend failed)
    leaves ``ctx.usage`` as what was used up to there (``partial_usage``). Use it with
    ``contextlib.aclosing`` so that the upstream connection closes as soon as the caller stops.
    """
    splitter = sse.EventSplitter()
    held: bytes | None = None  # the latest finish chunk, waiting for usage
    finished = False
    response = upstream.response
    data = upstream.first
    try:
        while True:
            if not data:
                data = await response.readany()
                if not data:
                    break
            out: list[bytes] = []
            end: StreamEnd | None = None
            for event in splitter.feed(data):
                if sse.is_done(event):
                    if not finished:
                        end = StreamEnd(b"".join(out), held, None)
                        out, held, finished = [], None, True
                    out.append(sse.DONE)
                elif sse.is_usage(event):
                    usage_chunk = sse.decode(event)
                    ctx.usage = usage_chunk.get("usage")
                    end = StreamEnd(b"".join(out), held, usage_chunk)
                    out, held, finished = [], None, True
                elif sse.is_error(event):
                    ctx.upstream_error = "upstream_error_event"
                    if held is not None:
                        out.append(held)
                        held = None
                    out.append(_normalised_error_event(event))
                elif sse.is_comment(event):
                    out.append(event)
                else:
                    event, prompt, generated = sse.running_usage(event, strip=not ctx.continuous_usage)
                    if generated >= 0:
                        ctx.gen_tokens_seen = generated  # read by the energy sampler
                        ctx.gen_tokens_exact = True
                        if prompt > 0:
                            ctx.prompt_tokens = prompt  # exact, from the backend
                    else:  # a backend without running usage: one token per event
                        ctx.gen_tokens_seen += 1
                    if sse.has_reasoning(event):
                        event, texts = sse.reasoning_event(event)
                        ctx.reasoning_parts.extend(texts)
                    if sse.has_finish(event):
                        if held is not None:
                            out.append(held)
                        held = event
                        continue
                    if ctx.first_byte is None:
                        ctx.first_byte = time.monotonic()
                    out.append(event)
            if end is not None:
                end.after = b"".join(out)
                yield end
            elif out:
                yield b"".join(out)
            data = b""
        if not finished:
            # The stream ended without [DONE]: the backend died mid-stream.
            raise aiohttp.ClientPayloadError("upstream closed the stream before [DONE]")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        ctx.upstream_error = "backend_stream_error"
        if ctx.usage is None:
            ctx.usage = partial_usage(ctx)
        tail = [held] if held is not None else []
        err = GatewayError(502, f"The backend failed mid-stream: {exc}", code="backend_stream_error")
        tail += [sse.encode(err.body()), sse.DONE]
        yield b"".join(tail)
    finally:
        # The client left (or the server is stopping) before the usage chunk: what was generated
        # up to here is still used, and budgets and the ledger must see it.
        if not finished and ctx.usage is None:
            ctx.usage = partial_usage(ctx)
        upstream.close()


def partial_usage(ctx: RequestContext) -> dict[str, Any]:
    """The usage of a stream that ended before its usage chunk: the prompt (exact when vLLM
    reported running usage, else the gateway's count) and the tokens relayed so far."""
    prompt, generated = ctx.prompt_tokens or ctx.prompt_tokens_est, ctx.gen_tokens_seen
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "partial": True,
    }


def _normalised_error_event(event: bytes) -> bytes:
    try:
        payload = sse.decode(event)
    except ValueError:
        return event
    status = payload.get("error", {}).get("code") if isinstance(payload.get("error"), dict) else None
    return sse.encode(normalise(status if isinstance(status, int) else 500, payload))
