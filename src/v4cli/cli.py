"""The `v4` command. One short function per verb; torch, the runtime and rich are imported inside the
verbs so `v4 --help` answers at once.

Exit codes: 0 done, 1 a problem with the input or the environment (the message says what to do),
2 a usage error (Typer's), 130 interrupted. Set V4_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__

if TYPE_CHECKING:
    from .console import Console
    from .events import Backend

app = typer.Typer(
    name="v4",
    help="Run DeepSeek-V4 on your own machine: pull a model, chat with it, ask it about files and repositories.\n\n"
    "Examples:\n\n"
    "  v4 pull flash\n\n"
    "  v4 chat --model flash\n\n"
    '  v4 ask --file src/ "where is the config parsed?"\n\n'
    '  cat build.log | v4 ask "why does this fail?"',
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _opt(*decls: str, help: str, **kw: Any) -> Any:
    return typer.Option(*decls, help=help, **kw)


ModelOpt = Annotated[str | None, _opt("--model", "-m", metavar="MODEL", help="Model: tiny, flash, pro, a Hub repo "
                                      "id or a folder (default: V4_MODEL, else the first pulled, else tiny).")]
ThinkOpt = Annotated[bool, _opt("--think/--no-think", help="Reason before answering (DeepSeek's default).")]
EffortOpt = Annotated[str | None, _opt("--effort", metavar="high|max", help="Reasoning effort: high or max.")]
UrlOpt = Annotated[str | None, _opt("--url", metavar="URL", help="Talk to an OpenAI-compatible server (v4 serve, "
                                    "DeepSeek's API, SGLang, vLLM) instead of running the model here.")]
KeyOpt = Annotated[str | None, _opt("--api-key", metavar="KEY", envvar="V4_API_KEY", show_envvar=True,
                                    help="API key for --url.")]
ContextOpt = Annotated[int, _opt("--context", min=256, metavar="TOKENS", help="Context length in tokens.")]
TempOpt = Annotated[float | None, _opt("--temperature", "-t", min=0.0, metavar="T", help="Sampling temperature.")]
ShowThinkOpt = Annotated[bool, _opt("--show-thinking", help="Keep the reasoning on screen.")]
JsonOpt = Annotated[bool, _opt("--json", help="Machine-readable output.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"v4 {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, _opt("--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")] = False) -> None:
    """Run DeepSeek-V4 on your own machine."""


# ---- shared plumbing ---------------------------------------------------------------------------------------
def _console(show_thinking: bool = False) -> Console:
    from .console import Console

    return Console(show_thinking=show_thinking)


def _user_error(e: BaseException) -> bool:
    """Errors whose message is the whole story (no traceback): ours, the runtime's and the OS's."""
    from .events import BackendError
    from .hub import HubError

    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (HubError, BackendError, OSError, ValueError)) or "BudgetError" in names


@contextlib.contextmanager
def _handled(console: Console, interrupted: str = "interrupted") -> Iterator[None]:
    try:
        yield
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except KeyboardInterrupt:
        console.error(interrupted)
        raise typer.Exit(130) from None
    except Exception as e:
        if os.environ.get("V4_DEBUG") or not _user_error(e):
            raise
        console.error(str(e) or type(e).__name__)
        raise typer.Exit(1) from None


def _effort(value: str | None) -> str | None:
    if value not in (None, "high", "max"):
        raise typer.BadParameter(f"{value!r} is not high or max", param_hint="--effort")
    return value


def _backend(model: str | None, url: str | None, api_key: str | None, context: int) -> Backend:
    from .backend import make_backend

    return make_backend(model, url, api_key, context=context)


# ---- models ----------------------------------------------------------------------------------------------
@app.command()
def pull(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="flash, pro, a Hub repo id (owner/name) or tiny.")],
    revision: Annotated[str | None, _opt("--revision", metavar="REV", help="Branch, tag or commit.")] = None,
    include: Annotated[list[str] | None, _opt("--include", metavar="GLOB", help="Only files matching this glob "
                                              "(repeatable; config and tokenizer always come).")] = None,
    token: Annotated[str | None, _opt("--token", metavar="TOKEN", envvar="HF_TOKEN", help="Hub token.")] = None,
    checksums: Annotated[bool, _opt("--checksums", help="Also hash every file against the Hub.")] = False,
) -> None:
    """Download a model from the Hugging Face Hub, resuming what an earlier pull left, then check it.

    HF_ENDPOINT picks a mirror, HF_HUB_OFFLINE=1 only checks the local cache.

    Examples:

      v4 pull flash

      v4 pull deepseek-ai/DeepSeek-V4-Pro --revision main
    """
    from . import hub

    c = _console()
    with _handled(c, f"pull interrupted: run `v4 pull {model}` again to continue; finished files are kept"):
        with c.download(model) as progress:
            path = hub.pull(model, revision=revision, include=include or None, token=token, progress=progress,
                            checksums=checksums)
        c.info(f"{model} is ready at {path}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List the models on this machine (the built-in tiny once written, folders, pulled repos).

    Examples:

      v4 list

      v4 list --json
    """
    from . import hub
    from .console import size

    c = _console()
    with _handled(c):
        models = hub.list_models()
        if as_json:
            c.json([{"name": m.name, "kind": m.kind, "path": str(m.path), "size_bytes": m.size_bytes,
                     "revision": m.revision} for m in models])
        elif not models:
            c.info("no models yet: `v4 pull flash` downloads one; `tiny` is built in (random weights)")
        else:
            rows = [(m.name, size(m.size_bytes), m.kind, str(m.path)) for m in models]
            c.table(["NAME", "SIZE", "KIND", "PATH"], rows, right=[1])


app.command("ls", hidden=True, help="Same as list.")(list_)


@app.command()
def show(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name, repo id or folder.")],
    context: Annotated[int | None, _opt("--context", min=1, metavar="TOKENS", help="Add the memory plan at "
                                        "this context.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model's configuration, its size and (with --context) the memory it needs.

    Examples:

      v4 show flash --context 131072

      v4 show tiny --json
    """
    from . import hub
    from .console import size

    c = _console()
    with _handled(c):
        info = hub.show(model, context)
        if as_json:
            c.json(info)
            return
        plan = info.pop("memory_plan", None)
        pretty = {k.replace("_", " "): v for k, v in info.items() if v is not None}
        for key in ("weights bytes", "disk bytes"):
            if key in pretty:
                pretty[key.replace(" bytes", "")] = size(pretty.pop(key))
        pretty["layer types"] = ", ".join(f"{n} {k}" for k, n in info["layer_types"].items())
        c.fields(pretty)
        if plan is not None:
            c.print()
            c.print(plan["text"])
        if model == "tiny":
            c.note("tiny has random weights: its output is noise")


@app.command()
def rm(model: Annotated[str, typer.Argument(metavar="MODEL", help="Model to delete (all its revisions).")]) -> None:
    """Delete a downloaded model (or the built-in tiny, which is rebuilt on next use).

    Examples:

      v4 rm flash
    """
    from . import hub
    from .console import size

    c = _console()
    with _handled(c):
        freed = hub.remove(model)
        c.info(f"removed {model} ({size(freed)} freed)")


# ---- talking to a model --------------------------------------------------------------------------------------
@app.command()
def chat(
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    system: Annotated[str | None, _opt("--system", "-s", metavar="TEXT", help="System prompt.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 32768,
    max_tokens: Annotated[int, _opt("--max-tokens", min=1, metavar="N", help="Longest answer in tokens.")] = 4096,
    temperature: TempOpt = None,
    show_thinking: ShowThinkOpt = False,
) -> None:
    """Chat in the terminal. Enter sends, Alt-Enter adds a line, Ctrl-C stops an answer, /help lists commands.

    Input history is kept in V4_HOME/history.

    Examples:

      v4 chat

      v4 chat --model flash --no-think -s "Answer in French."

      v4 chat --url https://api.deepseek.com --api-key $DEEPSEEK_API_KEY --model deepseek-v4-pro
    """
    from . import settings
    from .events import Options
    from .remote import RemoteBackend
    from .repl import ChatState, Repl

    c = _console(show_thinking)
    with _handled(c):
        effort = _effort(effort)
        backend = _backend(model, url, api_key, context)

        def switch(name: str) -> Backend:
            if url:
                return RemoteBackend(url, name, api_key)
            from . import hub

            hub.resolve(name, materialize=False)  # unknown names fail now, not at the next question
            return _backend(name, None, None, context)

        state = ChatState(system=system, thinking=think, effort=effort,
                          options=Options(temperature=temperature, max_tokens=max_tokens))
        piped = sys.stdin is not None and not sys.stdin.isatty()  # `printf 'q1\nq2\n' | v4 chat` works too
        Repl(backend, c, state=state, history=settings.home() / "history", switch_model=switch,
             lines=iter(sys.stdin) if piped else None).run()


def _stdin_text() -> str | None:
    """Piped input (`cat log | v4 ask ...`); None when stdin is a terminal or empty."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    data = stream.read()
    return data if data.strip() else None


@app.command()
def ask(
    question: Annotated[str, typer.Argument(metavar="QUESTION", help="The question. Piped stdin is added before it.")],
    file: Annotated[list[Path] | None, _opt("--file", "-f", metavar="PATH", help="A file, folder or repository "
                                            "(repeatable). .gitignore, binaries and secrets are skipped.")] = None,
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 65536,
    max_tokens: Annotated[int, _opt("--max-tokens", min=1, metavar="N", help="Longest answer in tokens; the "
                                    "prompt gets the rest of the context.")] = 4096,
    temperature: TempOpt = None,
    exclude: Annotated[list[str] | None, _opt("--exclude", metavar="PATTERN", help="Gitignore-style pattern to "
                                              "skip (repeatable).")] = None,
    no_gitignore: Annotated[bool, _opt("--no-gitignore", help="Read files .gitignore excludes.")] = False,
    dry_run: Annotated[bool, _opt("--dry-run", help="Only print what would be read (files in, skipped and why, "
                                  "tokens per folder, total against the budget).")] = False,
    as_json: Annotated[bool, _opt("--json", help="Machine-readable output (the summary, or the answer with its "
                                  "usage).")] = False,
    show_thinking: ShowThinkOpt = False,
) -> None:
    """Ask one question, about files, folders or repositories and piped input; the answer goes to stdout.

    Asking again about the same unchanged files reuses what was read (on-disk prefix cache).

    Examples:

      v4 ask "what is a mixture of experts?"

      v4 ask --file src/ --file README.md "how is a request scheduled?"

      v4 ask --file . --dry-run --json "summarize"

      git diff | v4 ask "write a commit message"
    """
    from . import chat_format, ingest
    from .events import Options

    c = _console(show_thinking)
    with _handled(c):
        effort = _effort(effort)
        if max_tokens >= context:
            raise typer.BadParameter(f"must be below --context ({context})", param_hint="--max-tokens")
        stdin = _stdin_text()
        mode = "thinking" if think else "chat"
        files, skipped = ingest.collect(file, extra_ignores=exclude or [], follow_gitignore=not no_gitignore) \
            if file else ([], [])
        if file and not files:
            why = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]) or "it is empty"
            raise ValueError(f"nothing to read in {', '.join(map(str, file))} ({why})")
        ing = None
        if files or stdin is not None or dry_run:
            ing = ingest.build_prompt(files, question, tokenizer=chat_format.load_tokenizer(), stdin_text=stdin,
                                      budget_tokens=context - max_tokens, skipped=skipped, thinking_mode=mode)
        if dry_run:
            assert ing is not None
            summary = ing.summary()
            c.json(summary) if as_json else c.print(ingest.format_summary(summary))
            return
        if ing is not None and ing.dropped:
            c.warn(f"{len(ing.dropped)} file(s) left out to fit {context - max_tokens:,} tokens "
                   "(--dry-run lists them; raise --context to keep them)")
        # defused either way (ingest defuses its prompt): a remote server gets what the local encoder writes
        content = chat_format.defuse(question) if ing is None else _user_text(ing.prompt_text, mode)
        backend = _backend(model, url, api_key, context)
        # local: the ingested ids as they are, with a snapshot after everything before the question
        events = backend.chat([{"role": "user", "content": content}], thinking=think, effort=effort,
                              options=Options(temperature=temperature, max_tokens=max_tokens),
                              prompt_ids=None if ing is None else ing.prompt_ids,
                              cache_prefix=None if ing is None else ing.prefix_tokens)
        try:
            if not as_json:
                c.render(events)
                return
            out = _as_json(events, backend)
            if ing is not None:
                out["summary"] = ing.summary()
            c.json(out)
        finally:
            events.close()  # type: ignore[attr-defined]


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, _opt("--host", metavar="ADDR", help="Address to listen on (127.0.0.1: this machine "
                              "only; 0.0.0.0: every interface — set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, _opt("--port", "-p", min=0, max=65535, metavar="PORT", help="TCP port.")] = 8000,
    context: ContextOpt = 32768,
    max_batch: Annotated[int, _opt("--max-batch", min=1, max=256, metavar="N", help="Requests decoded together; "
                                   "more wait in the queue.")] = 16,
    max_queue: Annotated[int, _opt("--max-queue", min=0, metavar="N", help="Requests allowed to wait; past "
                                   "that the server answers 429.")] = 64,
    api_key: Annotated[str | None, _opt("--api-key", metavar="KEY", envvar="V4_API_KEY", show_envvar=True,
                                        help="Require this key (Bearer or x-api-key) on every route but "
                                        "/health.")] = None,
    cors: Annotated[list[str] | None, _opt("--cors", metavar="ORIGIN", help="Allow browser requests from this "
                                           "origin (repeatable; * for any). Off by default.")] = None,
    max_request_bytes: Annotated[int, _opt("--max-request-bytes", min=1024, metavar="BYTES", help="Largest "
                                           "request body accepted.")] = 64 << 20,
    keepalive: Annotated[float, _opt("--keepalive", min=0.05, metavar="SECONDS", help="Send keep-alives after "
                                     "this long without output (queued requests, long prompts).")] = 5.0,
    no_prefix_cache: Annotated[bool, _opt("--no-prefix-cache", help="Do not reuse earlier prompts' state.")]
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
    from .backend import LocalBackend, default_model

    c = _console()
    with _handled(c):
        import uvicorn

        from .server.app import create_app

        name = model or default_model()
        from . import hub

        hub.resolve(name, materialize=False)  # an unknown name fails now, before the port is taken
        backend = LocalBackend(name, context=context, max_batch=max_batch, max_queue=max_queue,
                               prefix_cache=not no_prefix_cache)
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


def _as_json(events: Iterable[Any], backend: Backend) -> dict[str, Any]:
    from .events import Reply

    reply = Reply()
    for ev in events:
        reply.add(ev)
    # the model is read after the answer: a remote backend resolves it on its first request
    out: dict[str, Any] = {"model": backend.model, "answer": reply.content, "reasoning": reply.reasoning,
                           "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                          for c in reply.tool_calls]}
    if (st := reply.stats) is not None:
        out["usage"] = {"prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_tokens,
                        "completion_tokens": st.completion_tokens, "prefill_s": round(st.prefill_s, 3),
                        "decode_s": round(st.decode_s, 3), "finish_reason": st.finish_reason}
    return out


def _user_text(prompt_text: str, mode: str) -> str:
    """The user message inside an ingested prompt (what a remote server gets; it applies its own format)."""
    from .chat_format import encode_messages

    head, tail = encode_messages([{"role": "user", "content": "\0"}], thinking_mode=mode).split("\0")
    return prompt_text[len(head): len(prompt_text) - len(tail)]


if __name__ == "__main__":
    app()
