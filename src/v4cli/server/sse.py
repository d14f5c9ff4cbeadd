"""Server-sent events, and the one pump that turns an `Answer` into events for any dialect: keep-alive
markers while nothing happens (a queued request, a long prompt being read), a `Failure` when the
engine fails after the headers went out, and the request cancelled whenever the stream stops early
(a client that disconnects)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..answer import Answer
from .errors import ApiError

KEEPALIVE = object()  # "nothing new for a while": each dialect says it its own way


@dataclass(frozen=True)
class Failure:
    error: ApiError


def data(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def event(name: str, obj: Any) -> str:
    return f"event: {name}\n{data(obj)}"


def comment(text: str) -> str:
    return f": {text}\n\n"


def done() -> str:
    return "data: [DONE]\n\n"


async def pump(answer: Answer, cancel: Callable[[Answer], None], keepalive_s: float) -> AsyncIterator[Any]:
    """The answer's backend events as they come, KEEPALIVE after `keepalive_s` of silence, its final
    events (Stats last), or a Failure. Cancels the request when the consumer stops early."""
    finished = False
    try:
        while True:
            try:
                item = await answer.handle.next(timeout=keepalive_s)
            except (asyncio.TimeoutError, TimeoutError):
                yield KEEPALIVE
                continue
            except Exception as e:  # the engine failed while running this request
                yield Failure(ApiError(503, f"the engine could not finish this request ({e}); retry", None,
                                       "engine_error"))
                finished = True
                return
            if item is None:
                break
            for ev in answer.feed(item):
                yield ev
        finished = True
        for ev in answer.finish():
            yield ev
    finally:
        if not finished:
            cancel(answer)
