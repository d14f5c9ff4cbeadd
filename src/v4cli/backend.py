"""Where answers come from: an Engine in this process (`LocalBackend`) or any OpenAI-compatible URL
(`remote.RemoteBackend`). `chat` and `ask` see only the `Backend` protocol and its typed events.

Every backend's `chat()` returns a generator. Closing it (what Ctrl-C in the REPL does) stops the
answer: the local engine aborts the request, the remote connection is closed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import chat_format, settings

Message = Mapping[str, Any]
TINY_NOTICE = "model tiny: random weights, its output is noise (it exercises every code path, nothing more)"


# ---- events ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class ToolCall:
    """A complete call: `arguments` is a JSON object text."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Progress:
    """Prompt tokens read so far (prefill), of `total`."""

    done: int
    total: int


@dataclass(frozen=True)
class Notice:
    """A one-line remark about the backend (e.g. the tiny model's output is noise)."""

    text: str


@dataclass(frozen=True)
class Stats:
    """The last event of an answer."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    finish_reason: str

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


BackendEvent = Reasoning | Content | ToolCall | Progress | Notice | Stats


@dataclass
class Reply:
    """An answer folded from its events: what the chat history and `--json` output keep."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stats: Stats | None = None

    def add(self, ev: BackendEvent) -> None:
        if isinstance(ev, Content):
            self.content += ev.text
        elif isinstance(ev, Reasoning):
            self.reasoning += ev.text
        elif isinstance(ev, ToolCall):
            self.tool_calls.append(ev)
        elif isinstance(ev, Stats):
            self.stats = ev

    def message(self) -> dict[str, Any]:
        """The OpenAI-style assistant message (reasoning kept as `reasoning_content`)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name,
                                  "arguments": c.arguments}} for c in self.tool_calls]
        return msg


class BackendError(Exception):
    """Something the user can fix (wrong URL, bad key, server refusal); the message says what."""


@dataclass
class Options:
    """Sampling knobs the REPL's /set changes; None leaves the backend's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 2048
    seed: int | None = None


class Backend(Protocol):
    model: str

    def chat(self, messages: Sequence[Message], *, thinking: bool = True, effort: str | None = None,
             options: Options | None = None, prompt_ids: list[int] | None = None,
             cache_prefix: int | None = None) -> Iterator[BackendEvent]: ...

    def close(self) -> None: ...


# ---- local -------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised inside the engine's progress callback to abandon a prefill the user interrupted."""


class LocalBackend:
    """An Engine in this process, loaded on first use. The engine runs on a worker thread so prefill
    progress arrives as events and Ctrl-C on the main thread is seen at once."""

    def __init__(self, model: str = "tiny", *, context: int = 32768, chunk_size: int = 512,
                 device: str = "cpu", prefix_cache: bool = True) -> None:
        self.model, self.context, self.chunk_size, self.device = model, context, chunk_size, device
        self.prefix_cache = prefix_cache
        self.engine: Any = None
        self.memory_plan: str | None = None
        self._tokenizer: Any = None
        self._told = False
        self._worker: threading.Thread | None = None

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny"

    def load(self) -> None:
        if self.engine is not None:
            return
        from . import hub
        from .runtime import Engine

        path = hub.resolve(self.model).path
        kwargs: dict[str, Any] = dict(device=self.device, max_context=self.context, max_batch=1,
                                      chunk_size=self.chunk_size)
        if self.prefix_cache:
            kwargs["prefix_cache_dir"] = settings.home() / "cache" / "prefix"
        self.engine = Engine.from_pretrained(path, **kwargs)
        self.memory_plan = self.engine.memory_plan
        self._tokenizer = self.engine.tokenizer or chat_format.load_tokenizer()

    def _load_notices(self) -> Iterator[BackendEvent]:
        """Say what takes time before loading, and after it whether the twins run instead of the kernels."""
        from .runtime import kernels

        if not self.is_tiny:
            yield Notice(f"loading {self.model} …")  # a real checkpoint takes a while: say what is happening
        if self.device == "cpu" and kernels.will_build():
            yield Notice("building the C++ CPU kernels (once per machine, under a minute) …")
        self.load()
        if self.device == "cpu" and kernels.enabled() and self.engine.kernels.startswith(kernels.REFERENCE):
            yield Notice(f"running on {self.engine.kernels}: decoding is slower")

    def encode(self, messages: Sequence[Message], thinking: bool, effort: str | None) -> list[int]:
        prompt = chat_format.encode_messages(messages, "thinking" if thinking else "chat", reasoning_effort=effort)
        return chat_format.encode_prompt_ids(prompt, self._tokenizer or chat_format.load_tokenizer())

    def chat(self, messages: Sequence[Message], *, thinking: bool = True, effort: str | None = None,
             options: Options | None = None, prompt_ids: list[int] | None = None,
             cache_prefix: int | None = None) -> Iterator[BackendEvent]:
        from .runtime import SamplingParams

        if self.is_tiny and not self._told:  # once per session: enough to know, not enough to nag
            self._told = True
            yield Notice(TINY_NOTICE)
        if self.engine is None:
            yield from self._load_notices()
        mode = "thinking" if thinking else "chat"
        ids = prompt_ids if prompt_ids is not None else self.encode(messages, thinking, effort)
        opts = options or Options()
        params = SamplingParams(max_tokens=opts.max_tokens, temperature=1.0 if opts.temperature is None
                                else opts.temperature, top_p=1.0 if opts.top_p is None else opts.top_p,
                                seed=opts.seed, stop_token_ids=chat_format.stop_token_ids(mode))
        if cache_prefix is None:
            # A chat grows: the next turn's prompt repeats this one up to its last token (`<think>` here
            # becomes `</think>answer` there), so snapshot everything before it.
            cache_prefix = len(ids) - 1
        yield from self._run(ids, params, mode, cache_prefix)

    def _run(self, ids: list[int], params: Any, mode: str, cache_prefix: int) -> Iterator[BackendEvent]:
        if self._worker is not None:  # a second Ctrl-C may have left the last one finishing its step
            self._worker.join()
        engine, q, stop = self.engine, queue.Queue(), threading.Event()

        def progress(done: int, total: int) -> None:
            if stop.is_set():
                raise _Stop
            q.put(Progress(done, total))

        def work() -> None:
            gen = engine.stream(ids, params, progress=progress, cache_prefix=cache_prefix if cache_prefix > 0 else None)
            try:
                for ev in gen:
                    q.put(ev)
                    if stop.is_set():
                        break
            except _Stop:
                pass
            except BaseException as e:  # handed to the consumer, which raises it in its own thread
                q.put(e)
            finally:
                gen.close()  # aborts the request when it did not finish
                q.put(None)

        worker = self._worker = threading.Thread(target=work, name="v4-engine", daemon=True)
        parser, pending = chat_format.StreamParser(mode), {}
        t0 = time.perf_counter()
        first: float | None = None
        completion, cached, reason = 0, 0, "abort"
        worker.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Progress):
                    yield item
                    continue
                if first is None:
                    first = time.perf_counter()
                cached = max(cached, item.cached_tokens)
                if item.token_id >= 0:
                    completion += 1
                yield from _translate(parser.feed(item.text), pending)
                if item.finish_reason is not None:
                    reason = item.finish_reason
            yield from _translate(parser.finish(), pending)
            end = time.perf_counter()
            first = first or end
            yield Stats(len(ids), cached, completion, first - t0, end - first, reason)
        finally:
            stop.set()
            worker.join()

    def close(self) -> None:
        self.engine = None


def _translate(events: Sequence[Any], pending: dict[int, list[str]]) -> Iterator[BackendEvent]:
    """StreamParser events -> backend events; a tool call is reported once complete (`pending` holds the
    calls still open, across feeds of one answer)."""
    from .dsml import ContentDelta, ReasoningDelta, ToolCallDelta, ToolCallEnd, ToolCallStart

    for ev in events:
        if isinstance(ev, ReasoningDelta) and ev.text:
            yield Reasoning(ev.text)
        elif isinstance(ev, ContentDelta) and ev.text:
            yield Content(ev.text)
        elif isinstance(ev, ToolCallStart):
            pending[ev.index] = [ev.id, ev.name, ""]
        elif isinstance(ev, ToolCallDelta) and ev.index in pending:
            pending[ev.index][2] += ev.arguments
        elif isinstance(ev, ToolCallEnd) and ev.index in pending:
            cid, name, args = pending.pop(ev.index)
            yield ToolCall(ev.index, cid, name, args or "{}")


def make_backend(model: str | None, url: str | None = None, api_key: str | None = None, *,
                 context: int = 32768) -> Backend:
    """The backend the CLI flags describe: --url wins; otherwise the local model (default: see default_model)."""
    if url:
        from .remote import RemoteBackend

        return RemoteBackend(url, model, api_key)
    return LocalBackend(model or default_model(), context=context)


def default_model() -> str:
    """V4_MODEL, else the first pulled or placed model, else the built-in tiny."""
    if os.environ.get("V4_MODEL"):
        return os.environ["V4_MODEL"]
    from . import hub

    try:
        models = [m.name for m in hub.list_models() if m.kind != "builtin"]
    except Exception:  # a damaged cache must not stop `v4 chat` with tiny
        models = []
    return models[0] if models else "tiny"

