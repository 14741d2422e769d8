"""The OpenAI-compatible HTTP server (FastAPI).

Models served (``GET /v1/models``), with stable names across hot swaps:

* ``<prefix>-auto``: the router decides per request (adapter for domain queries, base otherwise);
* ``<prefix>-adapter``: always the fine-tuned adapter;
* ``<prefix>-base``: always the base model.

When the target is a merged deployment variant (a registry alias on an ``int8`` or ``gguf-<type>``
version) there is no adapter to switch off: ``<prefix>-auto`` and ``<prefix>-adapter`` both answer
with the variant (route ``variant``, no router), and ``<prefix>-base`` is not served (404).

Every response that ran the model carries ``x-forgetless-route`` (``adapter``, ``base``,
``fallback`` or ``variant``), ``x-forgetless-variant`` (``adapter``, ``int8``, ``gguf-<type>``) and,
when the router ran, ``x-forgetless-router-score``. Everything except
``/health`` needs ``Authorization: Bearer <key>``; every 4xx is OpenAI-style error JSON.

One client cannot hurt another: a body over the limit is refused on the bytes read (chunked or
not), a request that waited too long for the model gets 503 + ``Retry-After``, and a client that
disconnects stops its own generation (streaming or not).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .deployment import Deployment, EngineSettings, Target
from .guard import Guard
from .jobs import Event, GenParams, Job, QueueFull
from .metrics import CLIENT_CLOSED, ServeMetrics
from ..promptformat import PLAIN, PLAIN_STOP_STRINGS, prompt_format
from .prompts import EncodedPrompt, encode_chat, encode_text
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, error_response, new_id, now, usage

log = logging.getLogger("forgetless.serve")


@dataclass
class ServeSettings:
    """Limits and names of one server."""

    api_key: str
    model_prefix: str = "forgetless"
    max_prompt_tokens: int = 2048
    max_tokens_limit: int = 512  # the most a request may ask for
    default_max_tokens: int = 256  # chat requests that do not say
    max_body_bytes: int = 1_000_000
    # A request still waiting for the model after this long gets 503 + Retry-After instead of
    # waiting behind a long batch for ever.
    max_queue_wait_s: float = 30.0
    engine: EngineSettings = field(default_factory=EngineSettings)

    def model_ids(self) -> dict[str, str]:
        """Served model id -> what it runs (``auto``, ``adapter``, ``base``)."""
        p = self.model_prefix
        return {f"{p}-auto": "auto", f"{p}-adapter": "adapter", f"{p}-base": "base"}


def create_app(resolve_target: Callable[[], Target], settings: ServeSettings, *, deployment: Deployment | None = None) -> FastAPI:
    """Build the app. ``resolve_target()`` returns the folder to serve; it is called again every
    ``settings.engine.reload_interval_s`` and the model hot-swapped when the answer (or its files) change.
    """
    if not settings.api_key:
        raise ValueError("an API key is required")
    metrics = ServeMetrics() if deployment is None else deployment.metrics
    state: dict[str, Any] = {"dep": deployment}
    ids = settings.model_ids()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state["dep"] is None:
            state["dep"] = await run_in_threadpool(Deployment, resolve_target, metrics, settings.engine)
        poller = asyncio.create_task(_poll())
        try:
            yield
        finally:
            poller.cancel()
            await run_in_threadpool(state["dep"].close)

    async def _poll() -> None:
        # Re-resolve in the background so no request ever waits for a promote/rollback check.
        while True:
            await asyncio.sleep(settings.engine.reload_interval_s)
            try:
                await run_in_threadpool(state["dep"].refresh, force=True)
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("target refresh failed")

    app = FastAPI(title="forgetless", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.serve = state

    # --- errors: OpenAI-style JSON on every 4xx ---------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = err.get("msg", "invalid request")
        return error_response(400, f"{'.'.join(loc) + ': ' if loc else ''}{msg}", param=".".join(loc) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes, metrics=metrics)

    # --- endpoints --------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if state["dep"] is not None else "loading"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_cards() -> list[dict[str, Any]]:
        dep: Deployment = state["dep"]
        created = int(dep.loaded_at)
        variant = dep.variant
        if dep.spec.merged:
            merged = f"the merged {variant} variant; routing off (a merged variant has no adapter to switch off, no base is loaded)"
            desc = {"auto": merged, "adapter": merged}
        else:
            desc = {"auto": "routes each request to the adapter or the base", "adapter": "the fine-tuned adapter", "base": "the base model"}
        return [{"id": mid, "object": "model", "created": created, "owned_by": "forgetless", "forgetless_kind": kind,
                 "forgetless_variant": variant, "description": desc[kind]} for mid, kind in ids.items() if kind in desc]  # fmt: skip

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": _model_cards()}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in _model_cards():
            if card["id"] == model_id:
                return card
        raise APIError(404, f"model '{model_id}' does not exist", param="model", code="model_not_found")

    def _want(model: str) -> str:
        # Model names are only ever looked up in this table: never used as a path or a hub id.
        if model not in ids:
            raise APIError(404, f"model '{model}' does not exist; served: {', '.join(ids)}", param="model", code="model_not_found")
        dep: Deployment = state["dep"]
        if ids[model] == "base" and dep.spec.merged:
            served = ", ".join(m for m, k in ids.items() if k != "base")
            raise APIError(404, f"model '{model}' is not served: this server serves the merged {dep.variant} variant, which has no "
                           f"adapter to switch off and no base loaded; served: {served}", param="model", code="model_not_found")  # fmt: skip
        return ids[model]

    def _params(req: Any, requested: int | None, default: int) -> GenParams:
        max_tokens = requested if requested is not None else min(default, settings.max_tokens_limit)
        if max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {settings.max_tokens_limit}", param="max_tokens")
        return GenParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=req.stop_list(), seed=req.seed)

    def _check_prompt(prompt: EncodedPrompt, param: str) -> None:
        if len(prompt) > settings.max_prompt_tokens:
            raise APIError(400, f"prompt is {len(prompt)} tokens; this server allows at most {settings.max_prompt_tokens}",
                           param=param, code="context_length_exceeded")  # fmt: skip
        if not prompt.ids:
            raise APIError(400, "prompt is empty", param=param)

    def _check_chars(text_len: int, param: str) -> None:
        # Checked before tokenizing, so a huge body cannot make the tokenizer do unbounded work.
        if text_len > settings.max_prompt_tokens * 16:
            raise APIError(400, f"prompt is {text_len} characters, far over {settings.max_prompt_tokens} tokens",
                           param=param, code="context_length_exceeded")  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request) -> Response:
        req.check_unsupported()
        want = _want(req.model)
        params = _params(req, req.requested_max_tokens(), settings.default_max_tokens)
        msgs = [m.as_dict() for m in req.messages]
        if not any(m["role"] == "user" for m in msgs):
            raise APIError(400, "messages need at least one user message", param="messages")
        _check_chars(sum(len(m["content"]) for m in msgs), "messages")
        dep: Deployment = state["dep"]
        prompt = encode_chat(dep.engine.tok, msgs)
        _check_prompt(prompt, "messages")
        if prompt_format(dep.engine.tok) == PLAIN:
            # A base model's chat reply ends where the plain frame's next turn would start.
            params.stop = [*params.stop, *PLAIN_STOP_STRINGS]
        return await _run(request, "/v1/chat/completions", req, want, prompt, params, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        req.check_unsupported()
        want = _want(req.model)
        params = _params(req, req.max_tokens, req.max_tokens)
        text = req.prompt_text()
        _check_chars(len(text), "prompt")
        dep: Deployment = state["dep"]
        prompt = encode_text(dep.engine.tok, text)
        _check_prompt(prompt, "prompt")
        return await _run(request, "/v1/completions", req, want, prompt, params, chat=False)

    retry_after = {"Retry-After": str(max(1, math.ceil(settings.max_queue_wait_s)))}

    def count(request: Request, endpoint: str, route: str, status: str) -> None:
        metrics.requests.labels(endpoint, route, status).inc()
        request.scope.setdefault("forgetless", {})["counted"] = True  # the guard must not count it again

    async def _run(request: Request, endpoint: str, req: Any, want: str, prompt: EncodedPrompt, params: GenParams, *,
                   chat: bool) -> Response:  # fmt: skip
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(prompt=prompt, want=want, params=params, deliver=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        t0 = time.perf_counter()
        engine = state["dep"].engine  # the engine that answers: its variant goes in the header even across a swap
        try:
            engine.submit(job)
        except QueueFull:
            count(request, endpoint, "none", "429")
            return APIError(429, "server is at capacity, retry shortly", code="overloaded").response(headers=retry_after)
        # The body is read by now: the next ASGI message is the client's disconnect, if it comes.
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            first = await _next(events, gone, timeout=settings.max_queue_wait_s)
        except TimeoutError:
            job.cancel()
            gone.cancel()
            count(request, endpoint, "none", "503")
            return APIError(503, f"the model is busy: this request waited {settings.max_queue_wait_s:g} s; retry later",
                            code="queue_timeout").response(headers=retry_after)  # fmt: skip
        if first is None:
            job.cancel()  # the client went away while waiting: its row never runs, or stops at the next step
            count(request, endpoint, "none", CLIENT_CLOSED)
            return error_response(int(CLIENT_CLOSED), "client closed the request")
        if first.kind == "error":
            gone.cancel()
            return _finish_error(request, endpoint, first)
        headers = {"x-forgetless-route": first.route, "x-forgetless-variant": engine.variant}
        if first.score is not None:
            headers["x-forgetless-router-score"] = f"{first.score:.4f}"
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()

        def record(ev: Event) -> None:
            route = ev.route or first.route
            count(request, endpoint, route, "200")
            metrics.latency.labels(route).observe(time.perf_counter() - t0)
            metrics.tokens.labels(route, "prompt").inc(ev.prompt_tokens)
            metrics.tokens.labels(route, "completion").inc(ev.completion_tokens)
            log.info("%s model=%s route=%s score=%s prompt=%d completion=%d finish=%s", endpoint, req.model, route,
                     "-" if ev.score is None else f"{ev.score:.3f}", ev.prompt_tokens, ev.completion_tokens, ev.finish_reason)  # fmt: skip

        if not req.stream:
            parts: list[str] = []
            try:
                while True:
                    ev = await _next(events, gone)
                    if ev is None:
                        job.cancel()  # nobody reads the answer: stop generating it at the next step
                        count(request, endpoint, first.route, CLIENT_CLOSED)
                        return error_response(int(CLIENT_CLOSED), "client closed the request")
                    if ev.kind == "delta":
                        parts.append(ev.text)
                    elif ev.kind == "error":
                        return _finish_error(request, endpoint, ev)
                    elif ev.kind == "done":
                        break
            finally:
                gone.cancel()
            record(ev)
            text = "".join(parts)
            headers["x-forgetless-route"] = ev.route  # a mid-generation fallback is known by now
            choice: dict[str, Any] = {"index": 0, "finish_reason": ev.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
                choice["logprobs"] = None
            else:
                choice["text"] = text
                choice["logprobs"] = None
            body = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": req.model, "choices": [choice], "usage": usage(ev.prompt_tokens, ev.completion_tokens)}  # fmt: skip
            return JSONResponse(body, headers=headers)

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta_text: str | None, finish: str | None, *, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": delta_text} if delta_text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
            body = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        gone.cancel()  # StreamingResponse watches for the disconnect itself from here on
        outcome = {"ended": False}

        async def stream() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk(None, None, role=True)
                while True:
                    ev = await events.get()
                    if ev.kind == "delta":
                        yield chunk(ev.text, None)
                    elif ev.kind == "done":
                        outcome["ended"] = True
                        record(ev)
                        yield chunk(None, ev.finish_reason)
                        if req.include_usage():
                            body = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [],
                                    "usage": usage(ev.prompt_tokens, ev.completion_tokens)}  # fmt: skip
                            yield f"data: {json.dumps(body)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    elif ev.kind == "error":
                        outcome["ended"] = True
                        count(request, endpoint, ev.route or "none", "500")
                        err = {"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}}
                        yield f"data: {json.dumps(err)}\n\n"
                        return
            finally:
                job.cancel()  # a client that disconnects stops its generation at the next step
                if not outcome["ended"]:
                    count(request, endpoint, first.route, CLIENT_CLOSED)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    def _finish_error(request: Request, endpoint: str, ev: Event) -> JSONResponse:
        count(request, endpoint, ev.route or "none", "500")
        return error_response(500, ev.error or "generation failed", type_="server_error")

    return app


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (for a request whose body has been read already)."""
    while True:
        if (await request.receive())["type"] == "http.disconnect":
            return


async def _next(events: asyncio.Queue[Event], gone: asyncio.Future, timeout: float | None = None) -> Event | None:
    """The engine's next event; None if the client went away first. Raises TimeoutError after ``timeout``."""
    get = asyncio.ensure_future(events.get())
    done, _ = await asyncio.wait({get, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        return get.result()
    get.cancel()
    if gone in done:
        return None
    raise TimeoutError
