"""The engine loop: one thread owns the Engine and steps it while there is work.

Every front end (the REPL and `ask` through `LocalBackend`, each server handler) submits here and reads
its request's events from a `Handle`. Cancelling takes effect between two steps, so the other requests
of a batch never see a half-decided step, and it frees the request's decode state at once. Prefill
progress is an event on the handle's queue, not a callback that can raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

from .engine import Engine, Event
from .sampler import SamplingParams


@dataclass(frozen=True)
class Prefill:
    """Prompt tokens read so far, of `total` (the first one also says the request left the queue)."""

    done: int
    total: int


class LoopClosed(RuntimeError):
    """The engine loop stopped (the server is shutting down)."""


class QueueFull(RuntimeError):
    """More requests are waiting than the loop accepts; the client should retry later."""


Item = Event | Prefill | BaseException


class Handle:
    """One submitted request: its events arrive on a queue (thread or asyncio consumers)."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, cache_prefix: Sequence[int],
                 cache_salt: str, keep_output: bool) -> None:
        self.prompt, self.params = list(prompt), params
        self.cache_prefix, self.cache_salt, self.keep_output = cache_prefix, cache_salt, keep_output
        self.request_id: int | None = None
        self.submitted = time.perf_counter()
        self.done = False
        self.cached = 0  # prompt tokens restored from the prefix cache (known once admitted)
        self._read = 0  # prompt tokens reported read (restored ones included)
        self._q: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aq: asyncio.Queue[Item | None] | None = None

    def _put(self, item: Item | None) -> None:
        if self._aq is not None and self._aloop is not None:
            with contextlib.suppress(RuntimeError):  # the consumer's event loop is gone: nobody listens
                self._aloop.call_soon_threadsafe(self._aq.put_nowait, item)
        else:
            self._q.put(item)

    def __iter__(self) -> Iterator[Item]:
        """Blocking iteration until the request ends; exceptions are raised here, in the consumer."""
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def bind(self, aloop: asyncio.AbstractEventLoop) -> None:
        """Deliver to an asyncio consumer instead (call before submitting)."""
        self._aloop, self._aq = aloop, asyncio.Queue()

    async def next(self, timeout: float | None = None) -> Item | None:
        """The next item for an asyncio consumer; None at the end; raises TimeoutError after `timeout`."""
        assert self._aq is not None, "bind() the handle to an event loop first"
        item = await asyncio.wait_for(self._aq.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def aiter(self) -> AsyncIterator[Item]:
        while (item := await self.next()) is not None:
            yield item


@dataclass
class LoopStats:
    """Counters for /metrics (read from other threads; each field is replaced atomically)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    waiting: int = 0
    running: int = 0
    steps: int = 0
    errors: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class EngineLoop:
    """Runs `engine` on its own thread. `submit()` returns a Handle at once; `cancel()` aborts it
    before the next step; `close()` ends every request and the thread."""

    def __init__(self, engine: Engine, max_queue: int | None = None) -> None:
        self.engine, self.max_queue = engine, max_queue
        self.stats = LoopStats()
        self._cv = threading.Condition()
        self._inbox: list[Handle] = []
        self._cancels: list[Handle] = []
        self._live: dict[int, Handle] = {}
        self._scheduled_waiting = 0  # admitted to the engine, not yet given a slot (set by the loop thread)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="v4-engine-loop", daemon=True)
        self._thread.start()

    # ---- any thread --------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, *, cache_prefix: Sequence[int] = (),
               cache_salt: str = "", keep_output: bool = False,
               aloop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue a request. Raises here, in the caller, what the engine would refuse (a prompt over the
        context, a state that can never fit: `Engine.check`), and QueueFull past `max_queue` waiting."""
        self.engine.check(prompt_ids, params)
        h = Handle(prompt_ids, params, list(cache_prefix), cache_salt, keep_output)
        if aloop is not None:
            h.bind(aloop)
        with self._cv:
            if self._closed:
                raise LoopClosed("the server is shutting down")
            if self.max_queue is not None and self.waiting >= self.max_queue:
                raise QueueFull(f"{self.waiting} requests are already waiting (the limit is {self.max_queue})")
            self._inbox.append(h)
            self.stats.waiting = self.waiting
            self._cv.notify()
        return h

    def cancel(self, h: Handle) -> None:
        """Stop a request before the next step; its queue ends with an "abort" event. Idempotent."""
        with self._cv:
            if not h.done and h not in self._cancels:
                self._cancels.append(h)
                self._cv.notify()

    @property
    def waiting(self) -> int:
        """Requests submitted that have no decode slot yet."""
        return len(self._inbox) + self._scheduled_waiting

    @property
    def running(self) -> int:
        return max(len(self._live) - self._scheduled_waiting, 0)

    def close(self, timeout: float = 10) -> None:
        """Abort every request (each consumer sees an "abort" event) and stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # ---- the loop thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._cv:
                while not (self._inbox or self._cancels or self._closed or engine.has_work()):
                    self._cv.wait()
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
                closed = self._closed
            for h in inbox:
                self._admit(h)
            for h in (list(self._live.values()) if closed else cancels):
                self._abort(h)
            t0, read = time.perf_counter(), self.stats.prefilled_tokens
            try:
                events = engine.step() if engine.has_work() or cancels or closed else []
            except Exception as e:  # a failed step ends the requests in it; the loop keeps serving
                self._fail_all(e)
                continue
            self._scheduled_waiting = len(engine.scheduler.waiting)
            self._account(events, time.perf_counter() - t0, self.stats.prefilled_tokens - read)
            for ev in events:
                self._deliver(ev)
            if closed:
                return

    def _admit(self, h: Handle) -> None:
        stats = self.stats

        def progress(done: int, total: int, h: Handle = h) -> None:
            stats.prefilled_tokens += done - h._read
            h._read = done
            h._put(Prefill(done, total))

        try:
            h.request_id = self.engine.add_request(h.prompt, h.params, progress, h.cache_prefix,
                                                   cache_salt=h.cache_salt, keep_output=h.keep_output)
            h.cached = h._read = self.engine.cached(h.request_id)
        except Exception as e:  # refused after all: tell this request only
            h.done = True
            h._put(e)
            h._put(None)
            return
        stats.prompt_tokens += len(h.prompt)
        stats.cached_tokens += h.cached
        self._live[h.request_id] = h
        self._scheduled_waiting = len(self.engine.scheduler.waiting)

    def _abort(self, h: Handle) -> None:
        if h.request_id is None:  # refused, or closed before it was admitted
            if not h.done:
                h.done = True
                h._put(Event(-1, -1, "", None, "abort"))
                h._put(None)
            return
        self.engine.abort(h.request_id)

    def _deliver(self, ev: Event) -> None:
        h = self._live.get(ev.request_id)
        if h is None:
            return
        h._put(ev)
        if ev.finish_reason is not None:
            del self._live[ev.request_id]
            h.done = True
            self.stats.finished[ev.finish_reason] = self.stats.finished.get(ev.finish_reason, 0) + 1
            h._put(None)

    def _fail_all(self, e: Exception) -> None:
        self.stats.errors += 1
        for rid, h in list(self._live.items()):
            self.engine.abort(rid)
            h.done = True
            h._put(RuntimeError(f"the engine failed during this request: {type(e).__name__}: {e}"))
            h._put(None)
        self._live.clear()
        self.engine.step()  # collect the aborts so the engine forgets those requests

    def _account(self, events: list[Event], seconds: float, prefilled: int) -> None:
        s = self.stats
        s.steps += 1
        s.waiting, s.running = self.waiting, self.running
        generated = sum(ev.token_id >= 0 for ev in events)
        s.generated_tokens += generated
        if seconds > 0:
            if generated:
                s.decode_tokens_per_s = generated / seconds
            if prefilled:
                s.prefill_tokens_per_s = prefilled / seconds
