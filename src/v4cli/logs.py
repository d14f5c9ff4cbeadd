"""The exchange log: every `chat` and `ask` exchange in one SQLite file (V4_HOME/logs.db), so `v4 logs`
can list and show them and `-c` / `--cid` can continue a conversation.

One row per exchange: the conversation id and turn, model, endpoint ("local" or the --url), options,
the user's words as written (for `ask --file`: the question and the list of files), the answer
(content, reasoning, tool calls), token counts, cache hits, timings, finish reason and a UTC timestamp.
A row also keeps the user turn exactly as it was sent (`sent`: for `ask --file`, the whole ingested
message, zlib-compressed), because continuing must re-send it byte for byte: the prefix cache is keyed
by the prompt's tokens, so a follow-up only reuses the earlier turns when their text is the same.

The log is optional: a log that cannot be written is a warning (`Recorder`), never a failure.
`--no-log` and V4_NO_LOG=1 turn it off. The schema's version is SQLite's `user_version`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .errors import UserError
from .events import BackendEvent, Reply, tool_call_dict

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE exchanges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cid TEXT NOT NULL,              -- conversation id
    turn INTEGER NOT NULL,          -- 1, 2, ... within the conversation
    time TEXT NOT NULL,             -- UTC, ISO 8601
    verb TEXT NOT NULL,             -- ask or chat
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,         -- local, or the --url
    options TEXT NOT NULL,          -- JSON: thinking, effort, temperature, top_p, max_tokens, seed, system, context
    prompt TEXT NOT NULL,           -- the user's words as written
    inputs TEXT NOT NULL,           -- JSON: files read, files left out, stdin characters (ask)
    sent BLOB NOT NULL,             -- zlib(UTF-8) of the user turn as sent: what continuing re-sends
    content TEXT NOT NULL,
    reasoning TEXT NOT NULL,
    tool_calls TEXT NOT NULL,       -- JSON, OpenAI wire shape
    prompt_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    prefill_s REAL NOT NULL,
    decode_s REAL NOT NULL,
    total_s REAL NOT NULL,
    finish_reason TEXT NOT NULL
);
CREATE INDEX exchanges_cid ON exchanges (cid, turn);
"""

# every column but `sent` (big for `ask --file`; only continuing needs it)
_COLUMNS = ("id, cid, turn, time, verb, model, endpoint, options, prompt, inputs, content, reasoning, tool_calls, "
            "prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, prefill_s, decode_s, total_s, "
            "finish_reason")


class LogError(UserError):
    """The log cannot be read or written; the message names the file and what to do."""


def disabled(no_log: bool = False) -> bool:
    """`--no-log`, or V4_NO_LOG set to anything but empty, 0, false or no."""
    return no_log or os.environ.get("V4_NO_LOG", "").strip().lower() not in ("", "0", "false", "no")


def endpoint(url: str | None) -> str:
    return url or "local"


@dataclass
class Exchange:
    """One logged exchange (`sent` is empty when read by `recent`: only `conversation` loads it)."""

    cid: str
    turn: int
    verb: str
    model: str
    endpoint: str
    options: dict[str, Any]
    prompt: str
    inputs: dict[str, Any]
    sent: str
    content: str
    reasoning: str
    tool_calls: list[dict[str, Any]]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    id: int | None = None

    def messages(self) -> list[dict[str, Any]]:
        """This exchange as the user wrote it (the system prompt, the user's words)."""
        system = self.options.get("system")
        return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": self.prompt}]

    def turn_messages(self) -> list[dict[str, Any]]:
        """The user turn as sent and the answer, as `Reply.message()` shapes it (what the REPL keeps)."""
        answer: dict[str, Any] = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            answer["tool_calls"] = self.tool_calls
        return [{"role": "user", "content": self.sent}, answer]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["sent"]
        out["messages"] = self.messages()
        out["usage"] = {k: out.pop(k) for k in ("prompt_tokens", "cached_tokens", "completion_tokens",
                                               "reasoning_tokens")}
        out["timings"] = {k: round(out.pop(k), 3) for k in ("prefill_s", "decode_s", "total_s")}
        return {"id": out.pop("id"), **out}


@dataclass
class Conversation:
    """What continuing a conversation needs: its id, where it ran and its turns so far, in order."""

    cid: str
    model: str
    endpoint: str
    system: str | None
    messages: list[dict[str, Any]]  # user and assistant turns, as they were sent (no system message)

    def head(self, system: str | None = None) -> list[dict[str, Any]]:
        """The messages before a new user turn: the system prompt (this one, else the conversation's) and
        the turns so far."""
        from .chat_format import defuse  # as the REPL sends it (the encoder defuses it anyway)

        system = system if system is not None else self.system
        return [*([{"role": "system", "content": defuse(system)}] if system else []), *self.messages]


class Log:
    """The open log file. `create`: make the file (and V4_HOME) when missing; otherwise a missing log
    reads as empty."""

    def __init__(self, path: Path | None = None, *, create: bool = False) -> None:
        self.path = path or settings.logs_path()
        self.db: sqlite3.Connection | None = None
        if not create and not self.path.exists():
            return
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10)
            self._schema()
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise self._error(e) from None

    def _error(self, e: BaseException) -> LogError:
        if isinstance(e, LogError):
            return e
        text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if isinstance(e, sqlite3.DatabaseError) and "not a database" in text:
            return LogError(f"{self.path} is not a v4 log ({text}): move it aside and v4 starts a new one")
        return LogError(f"cannot use the log {self.path}: {text}")

    def _schema(self) -> None:
        assert self.db is not None
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise LogError(f"{self.path} was written by a newer v4 (log schema {version}, this v4 reads "
                           f"{SCHEMA_VERSION}): upgrade v4, or move the file aside")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables - {"sqlite_sequence"}:
            raise LogError(f"{self.path} is an SQLite file but not a v4 log (tables: {', '.join(sorted(tables))})"
                           ": move it aside and v4 starts a new one")
        with self.db:
            self.db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.db is None:
            return []
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None

    def insert(self, ex: Exchange) -> int:
        assert self.db is not None, "open the log with create=True to write"
        row = asdict(ex)
        row.pop("id")
        row["options"], row["inputs"] = json.dumps(ex.options), json.dumps(ex.inputs, ensure_ascii=False)
        row["tool_calls"] = json.dumps(ex.tool_calls, ensure_ascii=False)
        row["sent"] = zlib.compress(ex.sent.encode("utf-8"))
        names = list(row)
        try:
            with self.db:
                cur = self.db.execute(f"INSERT INTO exchanges ({', '.join(names)}) VALUES "
                                      f"({', '.join('?' * len(names))})", [row[n] for n in names])
        except sqlite3.Error as e:
            raise self._error(e) from None
        ex.id = cur.lastrowid
        return int(cur.lastrowid or 0)

    def recent(self, n: int) -> list[Exchange]:
        """The last `n` exchanges, oldest first (the newest ends the listing, next to the prompt)."""
        rows = self._query(f"SELECT {_COLUMNS}, '' FROM exchanges ORDER BY id DESC LIMIT ?", (n,))
        return [_exchange(r) for r in reversed(rows)]

    def find(self, cid: str) -> str:
        """The conversation id that `cid` names (the whole id or a unique start of it)."""
        if not cid.strip():
            raise LogError("give a conversation id (`v4 logs` lists them)")
        found = [r[0] for r in self._query("SELECT DISTINCT cid FROM exchanges WHERE substr(cid, 1, ?) = ?",
                                           (len(cid), cid))]
        if cid in found:
            return cid
        if not found:
            raise LogError(f"no conversation {cid!r} in {self.path} (`v4 logs` lists them)")
        if len(found) > 1:
            raise LogError(f"{cid!r} starts {len(found)} conversation ids ({', '.join(found[:5])}): give more of it")
        return found[0]

    def conversation(self, cid: str) -> list[Exchange]:
        """Every exchange of one conversation, in order, with what was sent."""
        rows = self._query(f"SELECT {_COLUMNS}, sent FROM exchanges WHERE cid = ? ORDER BY turn, id",
                           (self.find(cid),))
        return [_exchange(r) for r in rows]

    def last_cid(self) -> str | None:
        rows = self._query("SELECT cid FROM exchanges ORDER BY id DESC LIMIT 1")
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _exchange(r: tuple[Any, ...]) -> Exchange:
    (id_, cid, turn, when, verb, model, ep, options, prompt, inputs, content, reasoning, calls,
     pt, ct, cpt, rt, pre, dec, tot, reason, sent) = r
    text = zlib.decompress(sent).decode("utf-8") if sent else ""
    return Exchange(cid, turn, verb, model, ep, json.loads(options), prompt, json.loads(inputs), text, content,
                    reasoning, json.loads(calls), pt, ct, cpt, rt, pre, dec, tot, reason, when, id_)


def resume(cid: str | None = None) -> Conversation:
    """The conversation to continue: `cid` (or a unique start of it), else the last one logged."""
    log = Log()
    try:
        cid = cid or log.last_cid()
        if cid is None:
            raise LogError(f"no conversation to continue: {log.path} has no exchanges yet (ask without -c first)")
        turns = log.conversation(cid)
    finally:
        log.close()
    last = turns[-1]
    messages = [m for ex in turns for m in ex.turn_messages()]
    return Conversation(last.cid, last.model, last.endpoint, last.options.get("system"), messages)


def folded(events: Iterator[BackendEvent], reply: Reply) -> Generator[BackendEvent, None, None]:
    """`events` passed through, each also folded into `reply` (closing this closes `events`)."""
    try:
        for ev in events:
            reply.add(ev)
            yield ev
    finally:
        events.close()  # type: ignore[attr-defined]


class Recorder:
    """Writes one session's exchanges. A conversation goes on while each new turn's history is what was
    logged before it; any other history (a cleared or loaded chat) starts a new conversation id. The first
    failed write is a warning and the rest of the session logs nothing."""

    def __init__(self, verb: str, endpoint: str, warn: Callable[[str], None], *, enabled: bool = True,
                 conversation: Conversation | None = None) -> None:
        self.verb, self.endpoint, self.warn, self.enabled = verb, endpoint, warn, enabled
        self.cid = conversation.cid if conversation else None
        self.history: list[dict[str, Any]] = list(conversation.messages) if conversation else []

    def record(self, *, model: str, options: dict[str, Any], history: Sequence[dict[str, Any]], sent: str,
               prompt: str, reply: Reply, inputs: dict[str, Any] | None = None, total_s: float | None = None) -> None:
        """Log one finished exchange: `history` the turns before it (no system message), `sent` the user
        turn as sent, `prompt` the user's words."""
        st = reply.stats
        if not self.enabled or st is None or st.finish_reason == "abort":
            return
        if self.cid is None or list(history) != self.history:
            self.cid = uuid.uuid4().hex[:12]
        turn = len(history) // 2 + 1
        ex = Exchange(self.cid, turn, self.verb, model, self.endpoint, options, prompt, inputs or {}, sent,
                      reply.content, reply.reasoning, [tool_call_dict(c) for c in reply.tool_calls],
                      st.prompt_tokens, st.cached_tokens, st.completion_tokens, st.reasoning_tokens, st.prefill_s,
                      st.decode_s, st.prefill_s + st.decode_s if total_s is None else total_s, st.finish_reason)
        self.history = [*history, *ex.turn_messages()]
        try:
            log = Log(create=True)
            try:
                log.insert(ex)
            finally:
                log.close()
        except LogError as e:
            self.enabled = False
            self.warn(f"not logging ({e}; --no-log or V4_NO_LOG=1 turns logging off)")


def inputs(paths: Sequence[Path], ing: Any, stdin: Any) -> dict[str, Any]:
    """What an `ask` read, for the log: the paths given, the files kept and left out (as the prompt names
    them) and how much stdin; `ing` is the `ingest.Ingested` prompt, or None when nothing was read, `stdin`
    the `ingest.Piped` input or None."""
    if ing is None:
        return {}
    return {"paths": [str(p.resolve()) for p in paths], "files": [f.path for f in ing.files],
            "dropped": [d.path for d in ing.dropped], "stdin_chars": len(stdin.text) if stdin is not None else 0}


def first_words(text: str, width: int = 40) -> str:
    """`text` on one line, cut to `width` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def count_tokens(messages: Iterable[dict[str, Any]], thinking: bool) -> int:
    """Tokens the earlier turns take in the prompt (the bundled tokenizer; what a continued `ask` leaves
    for its files)."""
    from .chat_format import encode_messages, encode_prompt_ids

    return len(encode_prompt_ids(encode_messages(list(messages), "thinking" if thinking else "chat")))
