"""Which tokens run in the next forward step: decodes batched together, prompt chunks interleaved.

Torch-free on purpose: it only counts tokens, so its policy is unit-testable on its own.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass
class Request:
    prompt: list[int]
    params: Any
    id: int = field(default_factory=lambda: next(_ids))
    prefilled: int = 0  # prompt tokens already run through the model
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    state: Any = None  # the engine's per-sequence decode state
    cache_points: list[int] = field(default_factory=list)  # prompt lengths where a prefill chunk must end
    reserve: int = 0  # bytes of decode state this request may grow to (prompt + max_tokens)

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < len(self.prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Scheduler:
    """FIFO admission up to `max_batch` live sequences whose reserved decode-state bytes fit in
    `state_budget`; each step runs every decoding sequence's next token plus prompt chunks of the
    sequences still reading their prompt, `chunk_size` tokens in all.

    A prompt's chunks depend on that prompt alone: each is `chunk_size` tokens, cut only at a cache
    point and at the prompt's end, whatever else is in the step. One that does not fit in what is left
    of the step's tokens waits for the next step; the first always fits. (Splitting one budget across
    prompts would chunk the same prompt differently alone and in company, and with the FP8 rounding on,
    a chunk boundary changes the tokens generated.)
    """

    def __init__(self, max_batch: int, chunk_size: int, state_budget: int | None = None) -> None:
        if max_batch < 1 or chunk_size < 1:
            raise ValueError("max_batch and chunk_size must be at least 1")
        self.max_batch, self.chunk_size, self.state_budget = max_batch, chunk_size, state_budget
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def _fits(self, req: Request) -> bool:
        """A request is admitted when its reserve fits beside the running ones (alone it always may:
        the engine refuses at submission what could never fit)."""
        if self.state_budget is None or not self.running:
            return True
        return sum(r.reserve for r in self.running) + req.reserve <= self.state_budget

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[tuple[Request, int]]:
        """[(request, number of tokens to run)] for the next step; decodes first, then prompt chunks."""
        while self.waiting and len(self.running) < self.max_batch and self._fits(self.waiting[0]):
            self.running.append(self.waiting.popleft())
        plan = [(r, 1) for r in self.running if not r.in_prefill]
        budget = self.chunk_size
        for r in self.running:
            if r.in_prefill:
                n = self.next_chunk(r)
                if n <= budget:
                    plan.append((r, n))
                    budget -= n
        return plan

    def next_chunk(self, r: Request) -> int:
        """Tokens of `r`'s next prompt chunk: up to `chunk_size`, ending at its next cache point or prompt end."""
        end = min([len(r.prompt)] + [c for c in r.cache_points if c > r.prefilled])
        return min(self.chunk_size, end - r.prefilled)
