"""`v4 chat`: the terminal conversation."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

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

@app.command()
def chat(
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    system: Annotated[str | None, opt("--system", "-s", metavar="TEXT", help="System prompt.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 32768,
    max_tokens: Annotated[int, opt("--max-tokens", min=1, metavar="N", help="Longest answer in tokens.")] = 4096,
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
    from .. import settings
    from ..events import Options
    from ..remote import RemoteBackend
    from ..repl import ChatState, Repl

    c = console(show_thinking)
    with handled(c):
        effort = check_effort(effort)
        backend = backend_for(model, url, api_key, context)

        def switch(name: str) -> Backend:
            if url:
                return RemoteBackend(url, name, api_key)
            from .. import hub

            hub.resolve(name, materialize=False)  # unknown names fail now, not at the next question
            return backend_for(name, None, None, context)

        state = ChatState(system=system, thinking=think, effort=effort,
                          options=Options(temperature=temperature, max_tokens=max_tokens))
        piped = sys.stdin is not None and not sys.stdin.isatty()  # `printf 'q1\nq2\n' | v4 chat` works too
        Repl(backend, c, state=state, history=settings.home() / "history", switch_model=switch,
             lines=iter(sys.stdin) if piped else None).run()
