"""`v4 chat`: the terminal conversation."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

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
    from ..events import Backend, Reply
    from ..repl import ChatState

@app.command()
def chat(
    model: ModelOpt = None,
    think: ThinkOpt = True,
    effort: EffortOpt = None,
    system: Annotated[str | None, opt("--system", "-s", metavar="TEXT", help="System prompt.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    context: ContextOpt = 32768,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    max_tokens: Annotated[int, opt("--max-tokens", min=1, metavar="N", help="Longest answer in tokens.")] = 4096,
    temperature: TempOpt = None,
    show_thinking: ShowThinkOpt = False,
    cont: ContinueOpt = False,
    cid: CidOpt = None,
    no_log: NoLogOpt = False,
) -> None:
    """Chat in the terminal. Enter sends, Alt-Enter adds a line, Ctrl-C stops an answer, /help lists commands.

    Input history is kept in V4_HOME/history, every exchange in V4_HOME/logs.db (`v4 logs`).

    Examples:

      v4 chat

      v4 chat --model flash --no-think -s "Answer in French."

      v4 chat -c

      v4 chat --url https://api.deepseek.com --api-key $DEEPSEEK_API_KEY --model deepseek-v4-pro
    """
    from .. import logs, settings
    from ..events import Options
    from ..remote import RemoteBackend
    from ..repl import ChatState, Repl

    c = console(show_thinking)
    with handled(c):
        effort = check_effort(effort)
        conv = logs.resume(cid) if cont or cid else None
        if conv is not None and model is None and conv.endpoint == logs.endpoint(url):
            model = conv.model
        backend = backend_for(model, url, api_key, context, device, dtype)

        def switch(name: str) -> Backend:
            if url:
                return RemoteBackend(url, name, api_key)
            from .. import hub

            hub.resolve(name, materialize=False)  # unknown names fail now, not at the next question
            return backend_for(name, None, None, context, device, dtype)

        state = ChatState(messages=list(conv.messages) if conv else [],
                          system=system if system is not None or conv is None else conv.system,
                          thinking=think, effort=effort,
                          options=Options(temperature=temperature, max_tokens=max_tokens))
        if conv is not None:
            c.note(f"continuing conversation {conv.cid} ({len(conv.messages) // 2} earlier turn(s))")
        recorder = logs.Recorder("chat", logs.endpoint(url), c.warn, enabled=not logs.disabled(no_log),
                                 conversation=conv)

        def log_turn(s: ChatState, b: Backend, reply: Reply) -> None:
            o, sent = s.options, s.messages[-2]["content"]
            recorder.record(model=b.model, options={"thinking": s.thinking, "effort": s.effort,
                                                    "temperature": o.temperature, "top_p": o.top_p,
                                                    "max_tokens": o.max_tokens, "seed": o.seed, "system": s.system,
                                                    "context": context},
                            history=s.messages[:-2], sent=sent, prompt=sent, reply=reply)

        piped = sys.stdin is not None and not sys.stdin.isatty()  # `printf 'q1\nq2\n' | v4 chat` works too
        Repl(backend, c, state=state, history=settings.home() / "history", switch_model=switch,
             lines=iter(sys.stdin) if piped else None, on_turn=log_turn).run()
