"""`v4 serve`: the local HTTP API in DeepSeek's formats."""

from __future__ import annotations

from typing import Annotated

from .app import ContextOpt, DeviceOpt, DtypeOpt, ModelOpt, app, console, handled, opt


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, opt("--host", metavar="ADDR", help="Address to listen on (127.0.0.1: this machine "
                              "only; 0.0.0.0: every interface — set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, opt("--port", "-p", min=0, max=65535, metavar="PORT", help="TCP port.")] = 8000,
    context: ContextOpt = 32768,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    max_batch: Annotated[int, opt("--max-batch", min=1, max=256, metavar="N", help="Requests decoded together; "
                                   "more wait in the queue.")] = 16,
    max_queue: Annotated[int, opt("--max-queue", min=0, metavar="N", help="Requests allowed to wait; past "
                                   "that the server answers 429.")] = 64,
    api_key: Annotated[str | None, opt("--api-key", metavar="KEY", envvar="V4_API_KEY", show_envvar=True,
                                        help="Require this key (Bearer or x-api-key) on every route but "
                                        "/health.")] = None,
    cors: Annotated[list[str] | None, opt("--cors", metavar="ORIGIN", help="Allow browser requests from this "
                                           "origin (repeatable; * for any). Off by default.")] = None,
    max_request_bytes: Annotated[int, opt("--max-request-bytes", min=1024, metavar="BYTES", help="Largest "
                                           "request body accepted.")] = 64 << 20,
    keepalive: Annotated[float, opt("--keepalive", min=0.05, metavar="SECONDS", help="Send keep-alives after "
                                     "this long without output (queued requests, long prompts).")] = 5.0,
    no_prefix_cache: Annotated[bool, opt("--no-prefix-cache", help="Do not reuse earlier prompts' state.")]
    = False,
) -> None:
    """Serve a model over HTTP in DeepSeek's API formats (OpenAI Chat Completions, Completions/FIM).

    Point any OpenAI client at http://HOST:PORT (or .../v1); model names deepseek-v4-flash,
    deepseek-v4-pro, deepseek-chat and deepseek-reasoner are answered by the loaded model.

    Examples:

      v4 serve --model flash

      v4 serve --model tiny --port 8001 --api-key secret

      OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python my_agent.py
    """
    from ..backend import LocalBackend, default_model

    c = console()
    with handled(c):
        import uvicorn

        from ..server.app import create_app

        name = model or default_model()
        backend = LocalBackend(name, context=context, device=device, dtype=dtype, max_batch=max_batch,
                               max_queue=max_queue, prefix_cache=not no_prefix_cache)
        backend.check()  # an unknown name or a context past the model's fails now, before the port is taken
        application = create_app(backend, api_key=api_key, cors=cors, max_request_bytes=max_request_bytes,
                                 keepalive_s=keepalive, announce=c.info)
        where = f"http://{host}:{port}"
        c.info(f"v4 serve: {name} at {where} (OpenAI format: {where}/v1); loading the model, GET /health says "
               "when it is ready")
        if name == "tiny":
            c.note("tiny has random weights: its output is noise")
        if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
            c.warn(f"listening on {host} without --api-key: anyone who can reach this port can use the model")
        uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
