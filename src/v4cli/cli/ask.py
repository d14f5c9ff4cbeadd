"""`v4 ask`: one question about files, repositories and piped input."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import (
    CidOpt,
    ContextOpt,
    ContinueOpt,
    DeviceOpt,
    DtypeOpt,
    EffortOpt,
    KeyOpt,
    ModelOpt,
    NoLogOpt,
    ShowThinkOpt,
    TempOpt,
    ThinkOpt,
    UrlOpt,
    app,
    backend_for,
    check_effort,
    console,
    handled,
    opt,
)

if TYPE_CHECKING:
    from ..console import Console
    from ..events import Backend
    from ..ingest import Piped


def _stdin(budget_tokens: int) -> Piped | None:
    """Piped input (`cat log | v4 ask ...`), read up to a bound (see `ingest.stdin`); None when stdin is a
    terminal or empty."""
    from ..ingest import read_limit, read_piped

    stream = sys.stdin
    if stream is None or stream.isatty():
        return None
    return read_piped(getattr(stream, "buffer", None) or _Bytes(stream), read_limit(budget_tokens))


class _Bytes:
    """A text stream read as UTF-8 bytes (a stdin replaced by one without a binary buffer)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def read(self, n: int) -> bytes:
        return self.stream.read(n).encode("utf-8", "surrogateescape")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(
        metavar="QUESTION", help="The question. Piped stdin is added before it (read up to 16 bytes per token of "
        "budget; one too long for the budget keeps its head and tail, and says what was cut).")],
    file: Annotated[list[Path] | None, opt("--file", "-f", metavar="PATH", help="A file, folder or repository "
                                            "(repeatable). .gitignore, binaries and secrets are skipped.")] = None,
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 65536,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    max_tokens: Annotated[int, opt("--max-tokens", min=1, metavar="N", help="Longest answer in tokens; the "
                                    "prompt gets the rest of the context.")] = 4096,
    temperature: TempOpt = None,
    exclude: Annotated[list[str] | None, opt("--exclude", metavar="PATTERN", help="Gitignore-style pattern to "
                                              "skip (repeatable).")] = None,
    no_gitignore: Annotated[bool, opt("--no-gitignore", help="Read files .gitignore excludes.")] = False,
    dry_run: Annotated[bool, opt("--dry-run", help="Only print what would be read (files in, skipped and why, "
                                  "tokens per folder, total against the budget).")] = False,
    as_json: Annotated[bool, opt("--json", help="Machine-readable output (the summary, or the answer with its "
                                  "usage).")] = False,
    show_thinking: ShowThinkOpt = False,
    cont: ContinueOpt = False,
    cid: CidOpt = None,
    no_log: NoLogOpt = False,
) -> None:
    """Ask one question, about files, folders or repositories and piped input; the answer goes to stdout.

    Asking again about the same unchanged files reuses what was read (on-disk prefix cache).

    Examples:

      v4 ask "what is a mixture of experts?"

      v4 ask --file src/ --file README.md "how is a request scheduled?"

      v4 ask --file . --dry-run --json "summarize"

      git diff | v4 ask "write a commit message"

      v4 ask -c "and how would you test it?"
    """
    from .. import chat_format, ingest, logs
    from ..backend import LocalBackend, default_model
    from ..errors import UserError
    from ..events import Options, Reply

    c = console(show_thinking)
    with handled(c):
        effort = check_effort(effort)
        if max_tokens >= context:
            raise typer.BadParameter(f"must be below --context ({context})", param_hint="--max-tokens")
        conv = logs.resume(cid) if cont or cid else None  # the earlier turns this question follows
        if conv is not None and model is None and conv.endpoint == logs.endpoint(url):
            model = conv.model
        history = conv.head() if conv else []
        stdin = _stdin(context - max_tokens)
        mode = "thinking" if think else "chat"
        if dry_run and not url:  # the real run's refusals too: a name that is no model, a context past its limit
            LocalBackend(model or default_model(), context=context, device=device).check(materialize=False)
        try:
            files, skipped = ingest.collect(file, extra_ignores=exclude or [], follow_gitignore=not no_gitignore) \
                if file else ([], [])
        except FileNotFoundError as e:  # a --file path that does not exist
            raise UserError(f"--file: {e.args[0] if e.args else e}") from None
        if file and not files:
            why = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5]) or "it is empty"
            raise UserError(f"nothing to read in {', '.join(map(str, file))} ({why})")
        ing = None
        if files or stdin is not None or dry_run:
            budget = context - max_tokens - (logs.count_tokens(history, think) if history else 0)
            if budget <= 0:
                raise UserError(f"conversation {conv and conv.cid} already fills --context {context:,} with "
                                f"--max-tokens {max_tokens:,}: raise --context or start a new one (no -c)")
            ing = ingest.build_prompt(files, question, tokenizer=chat_format.load_tokenizer(), stdin_text=stdin,
                                      budget_tokens=budget, skipped=skipped, thinking_mode=mode)
        if dry_run:
            assert ing is not None
            summary = ing.summary()
            c.json(summary) if as_json else c.print(ingest.format_summary(summary))
            return
        if ing is not None and ing.dropped:
            c.warn(f"{len(ing.dropped)} file(s) left out to fit {context - max_tokens:,} tokens "
                   "(--dry-run lists them; raise --context to keep them)")
        if ing is not None and ing.stdin is not None:
            c.warn(ing.stdin.describe())
        # defused either way (ingest defuses its prompt): a remote server gets what the local encoder writes
        content = chat_format.defuse(question) if ing is None else _user_text(ing.prompt_text, mode)
        backend = backend_for(model, url, api_key, context, device, dtype)
        if conv is not None:
            c.note(f"continuing conversation {conv.cid} ({len(conv.messages) // 2} earlier turn(s))")
        # local: the ingested ids as they are, with a snapshot after everything before the question; a
        # continued conversation is encoded whole, and its earlier turns come from the prefix cache
        fresh = ing is not None and not history
        reply, t0 = Reply(), time.perf_counter()
        events = logs.folded(backend.chat([*history, {"role": "user", "content": content}], thinking=think,
                                          effort=effort, options=Options(temperature=temperature,
                                                                         max_tokens=max_tokens),
                                          prompt_ids=ing.prompt_ids if fresh and ing else None,
                                          cache_prefix=ing.prefix_tokens if fresh and ing else None), reply)
        recorder = logs.Recorder("ask", logs.endpoint(url), c.warn, enabled=not logs.disabled(no_log),
                                 conversation=conv)

        def record() -> None:
            recorder.record(model=backend.model, options={"thinking": think, "effort": effort,
                                                          "temperature": temperature, "max_tokens": max_tokens,
                                                          "system": conv.system if conv else None,
                                                          "context": context},
                            history=conv.messages if conv else [], sent=content, prompt=question, reply=reply,
                            inputs=logs.inputs(file or [], ing, stdin), total_s=time.perf_counter() - t0)

        try:
            if not as_json:
                c.render(events)
                record()
                return
            out = _as_json(events, backend, c)
            record()
            out["conversation"] = recorder.cid
            if ing is not None:
                out["summary"] = ing.summary()
            c.json(out)
        finally:
            events.close()



def _as_json(events: Iterable[Any], backend: Backend, c: Console) -> dict[str, Any]:
    from ..console import out_while_thinking
    from ..events import Notice, Reply

    reply = Reply()
    for ev in events:
        if isinstance(ev, Notice) and ev.warn:  # something optional is off: said on stderr in JSON mode too
            c.warn(ev.text)
        reply.add(ev)
    # the model is read after the answer: a remote backend resolves it on its first request
    out: dict[str, Any] = {"model": backend.model, "answer": reply.content, "reasoning": reply.reasoning,
                           "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                          for c in reply.tool_calls]}
    if (st := reply.stats) is not None:
        out["usage"] = {"prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_tokens,
                        "completion_tokens": st.completion_tokens, "prefill_s": round(st.prefill_s, 3),
                        "decode_s": round(st.decode_s, 3), "finish_reason": st.finish_reason}
        answered = bool(reply.content.strip() or reply.tool_calls)
        if (why := out_while_thinking(st, answered, bool(reply.reasoning), c.hints["budget"])) is not None:
            c.warn(why)  # stderr: stdout stays the JSON
    return out


def _user_text(prompt_text: str, mode: str) -> str:
    """The user message inside an ingested prompt (what a remote server gets; it applies its own format)."""
    from ..chat_format import encode_messages

    head, tail = encode_messages([{"role": "user", "content": "\0"}], thinking_mode=mode).split("\0")
    return prompt_text[len(head): len(prompt_text) - len(tail)]
