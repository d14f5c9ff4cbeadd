"""The Engine: the one owner of the model, the decode states and the scheduling.

The CLI, the REPL and the server all talk to this class. It runs on one thread: `step()` does one
forward pass over a batch of prompt chunks and decode tokens; `stream()` and `generate()` drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .cache import SeqState
from .detokenizer import StopMatcher, TextStream
from .model import Transformer
from .plan import plan_checkpoint
from .sampler import SamplingParams, TokenLogprob, new_generator, sample
from .scheduler import Request, Scheduler
from .weights import load_model

Progress = Callable[[int, int], None]


class ContextLimitError(ValueError):
    """A prompt longer than the engine's context; the message gives both numbers."""


@dataclass
class Event:
    request_id: int
    token_id: int
    text: str = ""
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop", "length" or "abort" on the request's last event


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str
    usage: Usage
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class _Live:
    """Per-request bookkeeping beside the scheduler's Request."""

    params: SamplingParams
    generator: torch.Generator
    text: TextStream | None
    stops: StopMatcher
    progress: Progress | None
    events: list[Event] = field(default_factory=list)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer | None = None, max_context: int | None = None,
                 max_batch: int = 8, chunk_size: int = 512) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.args = model.args
        self.max_context = max_context or self.args.max_position_embeddings
        self.scheduler = Scheduler(max_batch, chunk_size)
        self.device = model.embed.weight.device
        self.eos_id = self.args.eos_token_id
        self._live: dict[int, tuple[Request, _Live]] = {}
        self._backlog: dict[int, list[Event]] = {}  # events stepped out for requests other streams drive
        self.memory_plan: str | None = None  # set by from_pretrained: the plan's text, for printing

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        max_context: int | None = None, max_batch: int = 8, chunk_size: int = 512,
                        simulate_quant: bool = True, available: int | None = None) -> Engine:
        """`available`: bytes free for weights + decode state (default: what the device has free now)."""
        # Refuse before reading any weight when weights + decode state cannot fit (MemoryPlanError).
        mem = plan_checkpoint(path, max_context, max_batch, dtype.itemsize, available, device)
        if mem is not None:
            mem.check()
        model = load_model(path, device=device, dtype=dtype, simulate_quant=simulate_quant)
        tok_file = Path(path) / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(tok_file)) if tok_file.exists() else None
        engine = cls(model, tokenizer, max_context, max_batch, chunk_size)
        engine.memory_plan = mem.describe() if mem is not None else None
        return engine

    # ---- requests ----------------------------------------------------------------------------------
    def add_request(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
                    progress: Progress | None = None) -> int:
        """Queue a prompt; returns the request id. Refuses prompts over the context before any work."""
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        params = params or SamplingParams()
        if not prompt:
            raise ValueError("the prompt is empty: at least one token is needed")
        if len(prompt) >= self.max_context:
            raise ContextLimitError(
                f"the prompt is {len(prompt)} tokens but the context holds {self.max_context} "
                f"(including at least one generated token); shorten the prompt or raise the context")
        bad = [t for t in prompt if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.args.vocab_size - 1})")
        req = Request(prompt=prompt, params=params)
        live = _Live(params, new_generator(params.seed), TextStream(self.tokenizer) if self.tokenizer else None,
                     StopMatcher(params.stop), progress)
        self._live[req.id] = (req, live)
        self.scheduler.add(req)
        return req.id

    def abort(self, request_id: int) -> None:
        """Stop a request now and free its state; its last event has finish_reason "abort"."""
        if request_id not in self._live:
            return
        req, live = self._live[request_id]
        self.scheduler.remove(req)
        req.state = None
        if not req.finished:
            req.finish_reason = "abort"
            live.events.append(Event(req.id, -1, live.stops.flush(), None, "abort"))

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- one forward step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Event]:
        plan = self.scheduler.schedule()
        if not plan:
            return self._drain()
        tokens, states, lengths = [], [], []
        for req, n in plan:
            if req.state is None:
                req.state = SeqState.new(self.args, self.model.dtype, self.device)
            tokens.extend(req.prompt[req.prefilled : req.prefilled + n] if req.in_prefill else req.output[-1:])
            states.append(req.state)
            lengths.append(n)
        h = self.model(torch.tensor(tokens, device=self.device), states, lengths)
        ends = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        logits = self.model.head_logits(h[ends])
        for (req, n), row in zip(plan, logits, strict=True):
            live = self._live[req.id][1]
            if req.in_prefill:
                req.prefilled += n
                if live.progress:
                    live.progress(req.prefilled, len(req.prompt))
                if req.in_prefill:
                    continue
            self._accept(req, live, row)
        return self._drain()

    def _accept(self, req: Request, live: _Live, logits: torch.Tensor) -> None:
        p = live.params
        token, info = sample(logits, p, req.output, live.generator)
        req.output.append(token)
        text = live.text.push(token) if live.text else ""
        shown = live.stops.push(text)
        reason = None
        if live.stops.hit is not None or (not p.ignore_eos and (token == self.eos_id or token in p.stop_token_ids)):
            reason = "stop"
        elif len(req.output) >= p.max_tokens or len(req.prompt) + len(req.output) >= self.max_context:
            reason = "length"
        if reason is not None:
            if live.stops.hit is None and live.text:
                shown += live.stops.push(live.text.flush()) + live.stops.flush()
            req.finish_reason = reason
            self.scheduler.remove(req)
            req.state = None
        live.events.append(Event(req.id, token, shown, info, reason))

    def _drain(self) -> list[Event]:
        out = []
        for rid, (req, live) in list(self._live.items()):
            out.extend(live.events)
            live.events.clear()
            if req.finished:
                del self._live[rid]
        return out

    # ---- drivers -------------------------------------------------------------------------------------
    def stream(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
               progress: Progress | None = None) -> Iterator[Event]:
        """Events of one request as its tokens are decided. Closing the iterator aborts the request."""
        rid = self.add_request(prompt_ids, params, progress)
        backlog = self._backlog
        done = False
        try:
            while not done:
                mine = backlog.pop(rid, [])
                if not mine:
                    for ev in self.step():
                        backlog.setdefault(ev.request_id, []).append(ev)
                    mine = backlog.pop(rid, [])
                for ev in mine:
                    yield ev
                    done = done or ev.finish_reason is not None
        finally:
            if not done:
                self.abort(rid)
                self._drain()

    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
                 progress: Progress | None = None) -> GenerationResult:
        ids, texts, lps, reason = [], [], [], "abort"
        prompt_len = len(prompt_ids)
        for ev in self.stream(prompt_ids, params, progress):
            if ev.token_id >= 0:
                ids.append(ev.token_id)
            texts.append(ev.text)
            if ev.logprob is not None:
                lps.append(ev.logprob)
            reason = ev.finish_reason or reason
        return GenerationResult(ids, "".join(texts), reason, Usage(prompt_len, len(ids)), lps)
