"""`v4 ask`: one question about files, repositories and piped input."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import (
    ContextOpt,
    EffortOpt,
    KeyOpt,
    ModelOpt,
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
    from ..events import Backend

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
    file: Annotated[list[Path] | None, opt("--file", "-f", metavar="PATH", help="A file, folder or repository "
                                            "(repeatable). .gitignore, binaries and secrets are skipped.")] = None,
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 65536,
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
) -> None:
    """Ask one question, about files, folders or repositories and piped input; the answer goes to stdout.

    Asking again about the same unchanged files reuses what was read (on-disk prefix cache).

    Examples:

      v4 ask "what is a mixture of experts?"

      v4 ask --file src/ --file README.md "how is a request scheduled?"

      v4 ask --file . --dry-run --json "summarize"

      git diff | v4 ask "write a commit message"
    """
    from .. import chat_format, ingest
    from ..backend import LocalBackend, default_model
    from ..errors import UserError
    from ..events import Options

    c = console(show_thinking)
    with handled(c):
        effort = check_effort(effort)
        if max_tokens >= context:
            raise typer.BadParameter(f"must be below --context ({context})", param_hint="--max-tokens")
        stdin = _stdin_text()
        mode = "thinking" if think else "chat"
        if dry_run and not url:  # the real run's refusals too: a name that is no model, a context past its limit
            LocalBackend(model or default_model(), context=context).check(materialize=False)
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
        backend = backend_for(model, url, api_key, context)
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



def _as_json(events: Iterable[Any], backend: Backend) -> dict[str, Any]:
    from ..events import Reply

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
    from ..chat_format import encode_messages

    head, tail = encode_messages([{"role": "user", "content": "\0"}], thinking_mode=mode).split("\0")
    return prompt_text[len(head): len(prompt_text) - len(tail)]
