"""`v4 chat`: a prompt-toolkit loop over a Backend, with slash commands and input history.

Testable without a terminal: `run` takes prompt-toolkit's input/output objects (a pipe input and a
DummyOutput in tests) and a `Console` writing wherever the caller likes.
"""

from __future__ import annotations

import json
import shlex
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from . import settings
from .chat_format import defuse
from .console import Console
from .errors import UserError
from .events import OPTION_RANGES, Backend, BackendEvent, Options, Reply

HELP = """\
Type a message and press Enter to send it.
  Alt-Enter (or Esc then Enter) starts a new line; or wrap several lines in \"\"\" ... \"\"\".
  Ctrl-C stops the answer being written (and clears the line at the prompt); Ctrl-D or /exit leaves.
  Up/Down walk the input history, kept across sessions.

Commands:
  /help                 this text
  /think [on|off]       reasoning before answering (no argument: toggle); /nothink = /think off
  /effort high|max|off  reasoning effort (max: the Think-Max preamble)
  /system [TEXT]        set the system prompt (no TEXT: remove it)
  /set [KEY VALUE]      temperature (>= 0), top_p (0 to 1), max_tokens (>= 1), seed, system, or
                        show_thinking on|off (keep the reasoning on screen); no argument: show settings
  /show                 the current settings
  /read PATH...         add files or folders (.gitignore, binaries and secrets skipped) to the next message;
                        quote a path with spaces: /read "my notes/a b.txt"
  /clear                forget the conversation
  /save FILE            save the conversation and settings as JSON
  /load FILE            load a conversation saved with /save
  /model [NAME]         show the model, or switch to NAME
  /exit                 leave (also /quit, /bye, Ctrl-D)"""

_EXIT = object()


@dataclass
class ChatState:
    messages: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    thinking: bool = True
    effort: str | None = None
    options: Options = field(default_factory=Options)

    def request(self, text: str) -> list[dict[str, Any]]:
        """The messages for a new user turn; the system prompt and ``text`` are defused (`Repl.answer` keeps
        the defused text), so a remote server gets them as the local encoder would write them."""
        head = [{"role": "system", "content": defuse(self.system)}] if self.system else []
        return [*head, *self.messages, {"role": "user", "content": defuse(text)}]


class Repl:
    def __init__(self, backend: Backend, console: Console, *, state: ChatState | None = None,
                 history: History | Path | None = None, input: Any = None, output: Any = None,
                 switch_model: Callable[[str], Backend] | None = None, lines: Iterator[str] | None = None,
                 on_turn: Callable[[ChatState, Backend, Reply], None] | None = None) -> None:
        """`lines`: read input from these (a pipe: `printf 'hi\\n/exit\\n' | v4 chat`) instead of a terminal.
        `on_turn`: called after each kept turn (the state already holds it): the exchange log."""
        self.backend, self.console, self.switch_model, self.on_turn = backend, console, switch_model, on_turn
        self.lines = lines
        self.attached: dict[str, str] = {}  # /read files waiting for the next message: real path -> block
        self.state = state or ChatState()
        if isinstance(history, Path):
            history = self._file_history(history)
        keys = KeyBindings()

        @keys.add("escape", "enter")  # Alt-Enter / Esc Enter: a newline instead of sending
        def _newline(event: Any) -> None:
            event.current_buffer.insert_text("\n")

        # hints name what can be typed here, not the command line's flags
        console.hints = {"show_thinking": "/set show_thinking on", "budget": "/set max_tokens N, or /think off"}
        self.session: PromptSession[str] = PromptSession(history=history or InMemoryHistory(), input=input,
                                                         output=output, key_bindings=keys, multiline=False)

    def _file_history(self, path: Path) -> History:
        """Input history kept in ``path``; in memory only (said once) where it cannot be written."""
        why = settings.unwritable(path, folder=False)
        if why is None:
            return _KeptHistory(path, self.console)
        self.console.warn(settings.read_only("input history", why))
        return InMemoryHistory()

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        self.console.note(f"model {self.backend.model or '(server default)'} · /help for commands · Ctrl-D to leave")
        while True:
            try:
                text = self._read()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line, as in a shell
            except EOFError:
                break
            if text is None or not text.strip():
                continue
            if text.startswith("/"):
                if self.command(text.strip()) is _EXIT:
                    break
                continue
            self.answer(text)
        return 0

    def _prompt(self, message: str) -> str:
        if self.lines is None:
            return self.session.prompt(message)
        line = next(self.lines, None)
        if line is None:
            raise EOFError
        return line.rstrip("\n")

    def _read(self) -> str | None:
        text = self._prompt(">>> ")
        if not text.lstrip().startswith('"""'):
            return text
        first = text.lstrip()[3:]  # a """ block: read lines until one ends with """
        if first.rstrip().endswith('"""'):
            return first.rstrip()[:-3]
        lines = [first]
        while True:
            line = self._prompt("... ")
            if line.rstrip().endswith('"""'):
                lines.append(line.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(line)

    def answer(self, text: str) -> None:
        """Send one user turn; on Ctrl-C the stream is closed (the request aborted) and the turn forgotten."""
        s = self.state
        if self.attached:
            text, self.attached = "".join(self.attached.values()) + "\n" + text, {}
        text = defuse(text)  # what is sent and kept: typed special-token text stays text (see chat_format)
        reply = Reply()
        stream = self.backend.chat(s.request(text), thinking=s.thinking, effort=s.effort, options=s.options)

        def record(events: Iterator[BackendEvent]) -> Iterator[BackendEvent]:
            for ev in events:
                reply.add(ev)
                yield ev

        try:
            stats = self.console.render(record(stream))
        except KeyboardInterrupt:
            stream.close()
            self.console.note("stopped (this turn is not kept in the conversation)")
            return
        except Exception as e:  # a REPL reports and carries on: the next question may work
            stream.close()
            self.console.error(_describe(e))
            return
        finally:
            stream.close()
        if stats is None or stats.finish_reason == "abort":
            return
        s.messages += [{"role": "user", "content": text}, reply.message()]
        if self.on_turn is not None:
            self.on_turn(s, self.backend, reply)

    # ---- slash commands ----------------------------------------------------------------------------------
    def command(self, line: str) -> object:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        s, c = self.state, self.console
        if name in ("/exit", "/quit", "/bye"):
            return _EXIT
        if name in ("/help", "/?"):
            c.info(HELP)
        elif name in ("/think", "/nothink"):
            value = "off" if name == "/nothink" else arg.lower()
            if value not in ("", "on", "off"):
                c.error("use /think, /think on or /think off")
                return None
            s.thinking = (not s.thinking) if value == "" else value == "on"
            c.note(f"thinking {'on' if s.thinking else 'off'}")
        elif name == "/effort":
            if arg not in ("high", "max", "off"):
                c.error("use /effort high, /effort max or /effort off")
                return None
            s.effort = None if arg == "off" else arg
            c.note(f"reasoning effort {arg}")
        elif name == "/system":
            s.system = arg or None
            c.note(f"system prompt {'set' if arg else 'removed'}")
        elif name == "/set":
            self._set(arg)
        elif name == "/show":
            self._show()
        elif name == "/read":
            self._read_files(arg)
        elif name == "/clear":
            s.messages.clear()
            c.note("conversation cleared")
        elif name == "/save":
            self._save(arg)
        elif name == "/load":
            self._load(arg)
        elif name == "/model":
            self._model(arg)
        else:
            c.error(f"unknown command {name}; /help lists them")
        return None

    def _read_files(self, arg: str) -> None:
        """``/read PATH...``: ``<file>`` blocks as ``v4 ask`` lays them out (defused), once per real path."""
        from . import ingest

        try:
            # a path with spaces typed without quotes (or a Windows path) is taken whole when it exists
            paths = [arg] if arg and Path(arg).expanduser().exists() else shlex.split(arg)
        except (ValueError, OSError) as e:  # an unclosed quote; a name the OS refuses
            self.console.error(f"cannot read {arg}: {e}")
            return
        if not paths:
            self.console.error("use /read PATH (quote a path with spaces)")
            return
        try:
            files, skipped = ingest.collect([Path(p).expanduser() for p in paths])
        except OSError as e:
            self.console.error(str(e))
            return
        again = [f.path for f in files if f.real in self.attached]  # by real path: a file, then its folder
        defused = 0
        for f in files:
            if f.real not in self.attached:
                self.attached[f.real], n = ingest.file_block(f.path, f.text)
                defused += n > 0
        note = f"{len(self.attached)} file(s) will go with the next message"
        if len(files) - len(again) < len(self.attached):
            note = f"{len(files) - len(again)} file(s) added; {note}"
        if again:
            note += f"; {len(again)} already attached ({_some(again)})"
        if defused:
            note += f"; special-token text defused in {defused} file(s)"
        if skipped:
            note += f"; skipped {len(skipped)}: {_some([f'{s.path} ({s.reason})' for s in skipped])}"
        self.console.note(note)

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        value = value.strip()
        if not key:
            return self._show()
        o = self.state.options
        if key == "system":
            self.state.system = value or None
        elif key == "show_thinking":
            if value not in ("on", "off"):
                self.console.error("use /set show_thinking on or /set show_thinking off")
                return None
            self.console.show_thinking = value == "on"
        elif key in OPTION_RANGES:
            try:
                parsed = Options.parse(key, value)
                context = getattr(self.backend, "context", None)  # a local model's; a server says its own
                if key == "max_tokens" and isinstance(context, int) and parsed >= context:
                    raise ValueError(f"max_tokens must be below the context ({context:,} tokens)")
            except ValueError as e:
                self.console.error(str(e))
                return None
            setattr(o, key, parsed)
        else:
            self.console.error(f"cannot set {key!r}: use {', '.join(OPTION_RANGES)}, show_thinking or system")
            return None
        self.console.note(f"{key} = {value}")
        return None

    def _show(self) -> None:
        s = self.state
        self.console.fields({"model": self.backend.model or "(server default)",
                             "thinking": "on" if s.thinking else "off", "effort": s.effort or "default",
                             "show_thinking": "on" if self.console.show_thinking else "off",
                             "system": s.system or "-", **{k: "default" if v is None else v
                                                           for k, v in asdict(s.options).items()},
                             "turns": len(s.messages) // 2})

    def _save(self, arg: str) -> None:
        if not arg:
            self.console.error("use /save FILE")
            return
        s = self.state
        data = {"model": self.backend.model, "system": s.system, "thinking": s.thinking, "effort": s.effort,
                "options": asdict(s.options), "messages": s.messages}
        try:
            Path(arg).expanduser().write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as e:
            self.console.error(f"cannot write {arg}: {e.strerror or e}")
            return
        self.console.note(f"saved {len(s.messages) // 2} turns to {arg}")

    def _load(self, arg: str) -> None:
        if not arg:
            self.console.error("use /load FILE")
            return
        try:
            data = json.loads(Path(arg).expanduser().read_text(encoding="utf-8"))
            messages = data["messages"] if isinstance(data, dict) else data
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                raise ValueError("no list of messages")
        except OSError as e:
            self.console.error(f"cannot read {arg}: {e.strerror or e}")
            return
        except (ValueError, KeyError) as e:
            self.console.error(f"{arg} is not a conversation saved with /save ({e})")
            return
        s = self.state
        s.messages = messages
        if isinstance(data, dict):
            s.system = data.get("system", s.system)
            s.thinking = data.get("thinking", s.thinking)
            s.effort = data.get("effort", s.effort)
            for k, v in (data.get("options") or {}).items():
                if hasattr(s.options, k):
                    setattr(s.options, k, v)
        self.console.note(f"loaded {len(messages) // 2} turns from {arg}")

    def _model(self, arg: str) -> None:
        if not arg:
            self.console.info(f"model: {self.backend.model or '(server default)'}")
            return
        if self.switch_model is None:
            self.console.error("this session cannot switch models")
            return
        try:
            new = self.switch_model(arg)
        except Exception as e:
            self.console.error(_describe(e))
            return
        self.backend.close()
        self.backend = new
        self.console.note(f"model {arg} (loads on the next question)")


class _KeptHistory(FileHistory):
    """A FileHistory that, when its file stops being writable mid-session (disk full, a remount), warns once
    and keeps the rest of the session in memory instead of failing every message."""

    def __init__(self, path: Path, console: Console) -> None:
        super().__init__(str(path))
        self.console, self.failed = console, False

    def store_string(self, string: str) -> None:
        if self.failed:
            return
        try:
            super().store_string(string)
        except OSError as e:
            self.failed = True
            self.console.warn(settings.read_only("input history", f"{self.filename} cannot be written "
                                                                  f"({e.strerror or e})"))


def _some(items: list[str], shown: int = 3) -> str:
    """The first few items, and how many more: ``a, b, c and 2 more``."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _describe(e: BaseException) -> str:
    """A user error is its message; anything else is a bug: its traceback, so it can be seen and reported."""
    if isinstance(e, UserError):
        return str(e).strip() or type(e).__name__
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
