"""The engine loop: one thread steps the Engine; submit, cancel between steps, progress as events."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import torch

from v4cli.runtime import Engine, SamplingParams
from v4cli.runtime.engine import ContextLimitError
from v4cli.runtime.loop import EngineLoop, Prefill, QueueFull


@pytest.fixture(scope="module")
def engine(ckpt_dir) -> Engine:
    # rounding off: this file checks the loop, not the rounding (tests/test_batch_invariance.py does that)
    return Engine.from_pretrained(ckpt_dir("flash"), max_context=2048, max_batch=4, chunk_size=64,
                                  simulate_quant=False)


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(n)]


def _tokens(handle) -> tuple[list[int], str | None, list[Prefill]]:
    ids, reason, progress = [], None, []
    for item in handle:
        if isinstance(item, Prefill):
            progress.append(item)
            continue
        if item.token_id >= 0:
            ids.append(item.token_id)
        reason = item.finish_reason or reason
    return ids, reason, progress


def test_submit_streams_progress_then_tokens(engine: Engine) -> None:
    loop = EngineLoop(engine)
    try:
        ids, reason, progress = _tokens(loop.submit(_prompt(200, 1), SamplingParams(max_tokens=5, temperature=0)))
        assert len(ids) == 5 and reason == "length"
        assert [p.done for p in progress] == [64, 128, 192, 200] and {p.total for p in progress} == {200}
        alone = engine.generate(_prompt(200, 1), SamplingParams(max_tokens=5, temperature=0)).token_ids
        assert ids == alone
    finally:
        loop.close()


def test_cancel_mid_batched_prefill_leaves_others_unchanged(engine: Engine) -> None:
    params = SamplingParams(max_tokens=12, temperature=0)
    prompts = [_prompt(300, s) for s in (10, 11, 12)]
    alone = [engine.generate(p, params).token_ids for p in prompts]
    loop = EngineLoop(engine)
    try:
        handles = [loop.submit(p, params) for p in prompts]
        victim = handles[1]
        for item in victim:  # its first prefill chunk ran in a step with the others' chunks
            if isinstance(item, Prefill):
                loop.cancel(victim)
                break
        rest = list(victim)
        assert rest[-1].finish_reason == "abort" and not any(getattr(i, "token_id", -1) >= 0 for i in rest)
        assert _tokens(handles[0])[0] == alone[0]
        assert _tokens(handles[2])[0] == alone[2]
        deadline = time.monotonic() + 10
        while engine.has_work() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not engine.scheduler.running and not engine._live  # the victim's state is gone
    finally:
        loop.close()


def test_cancel_while_queued_and_queue_limit(engine: Engine) -> None:
    loop = EngineLoop(engine, max_queue=2)
    try:
        long = SamplingParams(max_tokens=40, temperature=0)
        running = []
        for pair in ((0, 1), (2, 3)):  # max_batch 4: all four get a slot
            running += [loop.submit(_prompt(20, s), long) for s in pair]
            while loop.waiting:
                time.sleep(0.01)
        queued = [loop.submit(_prompt(20, 9), long), loop.submit(_prompt(20, 8), long)]
        with pytest.raises(QueueFull):
            loop.submit(_prompt(20, 7), long)
        loop.cancel(queued[0])
        items = list(queued[0])
        assert items[-1].finish_reason == "abort"
        assert all(_tokens(h)[1] == "length" for h in running + queued[1:])
    finally:
        loop.close()


def test_refusals_are_raised_in_the_caller(engine: Engine) -> None:
    loop = EngineLoop(engine)
    try:
        with pytest.raises(ContextLimitError, match="2048"):
            loop.submit(_prompt(2048, 0), SamplingParams(max_tokens=1))
        with pytest.raises(ValueError, match="empty"):
            loop.submit([], SamplingParams(max_tokens=1))
    finally:
        loop.close()


def test_failed_step_fails_its_requests_and_the_loop_goes_on(engine: Engine) -> None:
    def broken(history, logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("processor exploded")

    loop = EngineLoop(engine)
    try:
        bad = loop.submit(_prompt(30, 1), SamplingParams(max_tokens=3, logits_processors=[broken]))
        with pytest.raises(RuntimeError, match="processor exploded"):
            _tokens(bad)
        ids, reason, _ = _tokens(loop.submit(_prompt(30, 1), SamplingParams(max_tokens=3, temperature=0)))
        assert len(ids) == 3 and reason == "length" and loop.stats.errors == 1
    finally:
        loop.close()


def test_asyncio_consumer(engine: Engine) -> None:
    loop = EngineLoop(engine)

    async def main() -> list[int]:
        h = loop.submit(_prompt(40, 2), SamplingParams(max_tokens=4, temperature=0), aloop=asyncio.get_running_loop())
        return [i.token_id async for i in h.aiter() if not isinstance(i, Prefill) and i.token_id >= 0]

    try:
        assert len(asyncio.run(main())) == 4
    finally:
        loop.close()
