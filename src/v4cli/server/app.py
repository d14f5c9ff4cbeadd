"""`v4 serve`: the FastAPI app. One LocalBackend (one engine loop) serves every request; each dialect
converts at the edge (openai.py, anthropic.py) to the internal Request and back.

Guarantees: a request a client can send gets its answer or a 4xx in the dialect's error shape, never a
500; the model loads in the background (/health is 503 until it is ready); a client that disconnects has
its request cancelled before the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.requests import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..answer import Answer
from ..backend import LocalBackend
from ..request import Request
from . import anthropic, openai, sse
from .anthropic_types import CountTokensRequest, MessagesRequest
from .errors import ApiError, bad, validation_message
from .guard import Guard, Metrics
from .models import ModelTable, UnknownModel
from .openai_types import ChatCompletionRequest, CompletionRequest


class Server:
    """The state one app serves from: the backend, its model names and readiness."""

    def __init__(self, backend: LocalBackend, *, keepalive_s: float = 5.0,
                 announce: Callable[[str], None] | None = None) -> None:
        self.backend, self.keepalive_s, self.announce = backend, keepalive_s, announce
        self.table = ModelTable(backend.model)
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.fingerprint = f"fp_v4cli_{__version__}_{backend.model.replace('/', '_')[:24]}"

    def load(self) -> None:
        try:
            self.backend.load()
            from .. import grammar

            grammar.vocab(self.backend.tokenizer)  # built once (seconds): not on the first JSON request
            self.ready.set()
        except Exception as e:  # the server stays up and says why on every request
            self.load_error = f"the model could not be loaded: {e}"
        if self.announce:
            for w in self.backend.warnings:  # optional things turned off (a prefix cache that cannot be written)
                self.announce(f"warning: {w}")
            self.announce(self.load_error or f"ready: {self.backend.model}, context {self.context:,} tokens, "
                          f"kernels: {self.backend.engine.kernels}")

    def check_ready(self) -> None:
        if self.load_error:
            raise ApiError(503, self.load_error, None, "model_load_failed")
        if not self.ready.is_set():
            raise ApiError(503, "the model is still loading; retry in a moment (GET /health says when)", None,
                           "model_loading")

    @property
    def context(self) -> int:
        return self.backend.engine.max_context

    async def submit(self, req: Request, requested: int | None, param: str = "max_tokens",
                     clamp: bool = False) -> Answer:
        """Encode, fix the answer's budget within the context (`clamp`: cut a larger request to what the
        context leaves instead of refusing it), and start it on the engine loop."""
        from ..runtime.engine import ContextLimitError
        from ..runtime.loop import LoopClosed, QueueFull
        from ..runtime.plan import MemoryPlanError

        self.check_ready()
        try:
            ids = await asyncio.to_thread(self.backend.prompt_ids, req)
        except ValueError as e:  # the encoder refused the messages
            raise bad(f"the messages cannot be encoded: {e}", "messages") from None
        if clamp and requested is not None and requested > self.context - len(ids) > 0:
            requested = self.context - len(ids)
        req.max_tokens = openai.max_tokens(requested, len(ids), self.context, param)
        try:
            return self.backend.submit(req, asyncio.get_running_loop(), ids=ids)
        except QueueFull as e:
            raise ApiError(429, f"Rate Limit Reached: {e}; retry shortly", None, "rate_limit_exceeded") from None
        except LoopClosed as e:
            raise ApiError(503, str(e), None, "server_closing") from None
        except (ContextLimitError, MemoryPlanError) as e:
            raise bad(str(e), "messages") from None
        except ValueError as e:  # e.g. a budget too small for any answer the grammar allows
            raise bad(str(e), param if "max_tokens" in str(e) else None) from None

    async def respond(self, answer: Answer, events: AsyncIterator[Any], build: Callable[[Any], dict[str, Any]],
                      http: HttpRequest) -> Response:
        """A non-streamed answer. While it is not ready, blank lines keep the connection alive (as
        DeepSeek sends them); a client that goes away cancels the request."""
        task = asyncio.ensure_future(_drain(events))
        waited = 0.0
        while not task.done() and waited < self.keepalive_s:
            await asyncio.wait({task}, timeout=0.25)
            waited += 0.25
            if not task.done() and await http.is_disconnected():
                task.cancel()
                return Response(status_code=499)
        if task.done():
            return _final(task.result(), answer, build, http.url.path)

        async def body() -> AsyncIterator[bytes]:
            try:
                while not task.done():
                    yield b"\n"
                    await asyncio.wait({task}, timeout=self.keepalive_s)
                failure = task.result()
                yield json.dumps(failure.error.body(http.url.path) if failure else build(answer.reply)).encode()
            finally:
                task.cancel()

        return StreamingResponse(body(), media_type="application/json")


async def _drain(events: AsyncIterator[Any]) -> sse.Failure | None:
    async for ev in events:
        if isinstance(ev, sse.Failure):
            return ev
    return None


def _final(failure: sse.Failure | None, answer: Answer, build: Callable[[Any], dict[str, Any]],
           path: str) -> Response:
    if failure is not None:
        return JSONResponse(failure.error.body(path), status_code=failure.error.status)
    return JSONResponse(build(answer.reply))


def _streaming(gen: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(backend: LocalBackend, *, api_key: str | None = None, cors: list[str] | None = None,
               max_request_bytes: int = 64 << 20, keepalive_s: float = 5.0, load: bool = True,
               announce: Callable[[str], None] | None = None) -> FastAPI:
    """The app over `backend`. `load`: load the model in a background thread when the app starts;
    `announce`: told one line when the model is ready or failed to load."""
    server = Server(backend, keepalive_s=keepalive_s, announce=announce)
    metrics = Metrics(backend)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:
            threading.Thread(target=server.load, name="v4-load", daemon=True).start()
        yield
        await asyncio.to_thread(backend.close)

    app = FastAPI(title="v4 serve", version=__version__, lifespan=lifespan,
                  description="DeepSeek-V4 on this machine, in DeepSeek's API formats.")
    app.state.server = server
    app.add_middleware(Guard, api_key=api_key, max_bytes=max_request_bytes, metrics=metrics,
                       open_paths=("/health",))
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["*"], allow_headers=["*"])

    @app.exception_handler(ApiError)
    async def api_error(http: HttpRequest, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(http.url.path), status_code=e.status)

    @app.exception_handler(UnknownModel)
    async def unknown_model(http: HttpRequest, e: UnknownModel) -> JSONResponse:
        return await api_error(http, ApiError(400, str(e), "model", "model_not_found"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(http: HttpRequest, e: StarletteHTTPException) -> JSONResponse:  # 404, 405
        return await api_error(http, ApiError(e.status_code, f"{http.method} {http.url.path}: {e.detail}", None,
                                              "not_found" if e.status_code == 404 else "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def invalid(http: HttpRequest, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid" or tuple(first.get("loc", ())) == ("body",):
            err = ApiError(400, f"the body is not a valid JSON object: {first.get('msg')}", None, "invalid_json")
        else:
            param, message = validation_message(errors)
            err = ApiError(422, message, param, "invalid_parameter")
        return await api_error(http, err)

    @app.exception_handler(Exception)
    async def unexpected(http: HttpRequest, e: Exception) -> JSONResponse:  # a bug: say so, keep serving
        metrics.errors.inc()
        return await api_error(http, ApiError(500, f"internal error ({type(e).__name__}: {e}); the server keeps "
                                                   "running", None, "internal_error"))

    @app.get("/health", tags=["server"])
    async def health() -> JSONResponse:
        if server.load_error:
            return JSONResponse({"status": "error", "error": server.load_error}, status_code=503)
        if not server.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": backend.model})

    @app.get("/metrics", tags=["server"])
    async def prometheus() -> Response:
        body, kind = metrics.render()
        return Response(body, media_type=kind)

    async def models() -> dict[str, Any]:
        """The names served, in a shape both SDKs read (OpenAI's list and Anthropic's page)."""
        data = [{"id": n, "object": "model", "owned_by": "deepseek", "created": 1777000000, "type": "model",
                 "display_name": n, "created_at": "2026-04-24T00:00:00Z"} for n in server.table.names()]
        return {"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"],
                "last_id": data[-1]["id"]}

    async def chat_completions(body: ChatCompletionRequest, http: HttpRequest) -> Response:
        req = openai.chat_request(body, server.table)
        answer = await server.submit(req, body.max_tokens if body.max_tokens is not None
                                     else body.max_completion_tokens)
        meta = openai.Meta(body.model, server.fingerprint)
        events = sse.pump(answer, backend.cancel, server.keepalive_s)
        thinking, logprobs = req.parse_mode == "thinking", req.logprobs is not None
        if body.stream:
            opts = body.stream_options
            return _streaming(openai.chat_stream(
                events, meta, thinking, include_usage=bool(opts and opts.include_usage),
                progress=bool(body.return_progress or (opts and opts.include_progress)), logprobs=logprobs))
        return await server.respond(answer, events, lambda r: openai.chat_object(r, meta, thinking, logprobs), http)

    async def completions(body: CompletionRequest, http: HttpRequest) -> Response:
        req = openai.completion_request(body, server.table)
        answer = await server.submit(req, body.max_tokens)
        meta = openai.Meta(body.model, server.fingerprint)
        events = sse.pump(answer, backend.cancel, server.keepalive_s)
        echo = req.text if body.echo else ""
        if body.stream:
            opts = body.stream_options
            return _streaming(openai.completion_stream(
                events, meta, echo or "", include_usage=bool(opts and opts.include_usage),
                progress=bool(body.return_progress or (opts and opts.include_progress))))
        return await server.respond(answer, events, lambda r: openai.completion_object(r, meta, echo or ""), http)

    async def messages(body: MessagesRequest, http: HttpRequest) -> Response:
        req = anthropic.request(body, server.table)
        # DeepSeek's 1M context takes any max_tokens; a local context may not, so the answer gets what is left
        answer = await server.submit(req, body.max_tokens, clamp=True)
        model, msg_id = body.model, anthropic.new_id()
        show = not (body.thinking and body.thinking.display == "omitted")
        thinking = req.parse_mode == "thinking"
        events = sse.pump(answer, backend.cancel, server.keepalive_s)
        if body.stream:
            return _streaming(anthropic.message_stream(events, answer, model, msg_id, show_thinking=show))
        return await server.respond(
            answer, events, lambda r: anthropic.message_object(r, model, msg_id, thinking, show), http)

    async def count_tokens(body: CountTokensRequest) -> dict[str, int]:
        """The exact V4 token count of the prompt this request would produce, from the same encoder."""
        server.check_ready()
        req = anthropic.request(body, server.table)
        return {"input_tokens": len(await asyncio.to_thread(backend.prompt_ids, req))}

    for prefix in ("/anthropic/v1", "/v1"):
        canonical = prefix == "/anthropic/v1"
        app.add_api_route(f"{prefix}/messages", messages, methods=["POST"], include_in_schema=canonical,
                          tags=["anthropic"])
        app.add_api_route(f"{prefix}/messages/count_tokens", count_tokens, methods=["POST"],
                          include_in_schema=canonical, tags=["anthropic"])
    app.add_api_route("/anthropic/v1/models", models, methods=["GET"], tags=["anthropic"])
    for prefix in ("/v1", "", "/beta", "/beta/v1"):
        canonical = prefix == "/v1"
        app.add_api_route(f"{prefix}/models", models, methods=["GET"], include_in_schema=canonical, tags=["openai"])
        app.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"],
                          include_in_schema=canonical, tags=["openai"])
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"], include_in_schema=canonical,
                          tags=["openai"])
    return app
