"""The Engine: the one owner of the model, the decode states and the scheduling.

The CLI, the REPL and the server all talk to this class. It runs on one thread: `step()` runs the
scheduled prompt chunks and decode tokens (in forward passes that keep each request's result
independent of the others, see `_forward`); `stream()` and `generate()` drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..tokens import model_tokenizer
from . import devices, kernels
from .args import ContextLimitError
from .cache import SeqState
from .detokenizer import StopMatcher, TextStream
from .model import Transformer
from .plan import MemoryPlanError, plan_checkpoint, state_bytes
from .prefix_cache import PrefixCache, model_key
from .sampler import SamplingParams, TokenLogprob, new_generator, sample
from .scheduler import Request, Scheduler
from .speculative import MtpDrafter, verify
from .weights import load_model

Progress = Callable[[int, int], None]


def release_large_blocks(threshold: int = 16 << 20) -> bool:
    """Ask glibc to mmap blocks of `threshold` bytes or more, so a freed prefill transient goes back to the
    OS at once. By default glibc raises that threshold as blocks are freed and keeps them in its heap: a
    131,072-token prefill peaked at 1,765 MB RSS that way and at 1,253 MB with this (bench/RESULTS.md).
    Process-wide; a no-op (False) where the C library has no mallopt."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


@dataclass
class Event:
    request_id: int
    token_id: int
    text: str = ""
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop", "length" or "abort" on the request's last event
    cached_tokens: int = 0  # prompt tokens this request took from the prefix cache
    stop: str | None = None  # the stop string that ended the request, if one did


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
    pending: list[int] = field(default_factory=list)  # decided tokens the main model has not run yet
    draft: list[int] = field(default_factory=list)  # MTP's proposal for the tokens after `pending`
    cached: int = 0  # prompt tokens restored from the prefix cache
    salt: str = ""  # prefix-cache isolation key
    keep_output: bool = False  # snapshot prompt + output when the request finishes


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer | None = None, max_context: int | None = None,
                 max_batch: int = 8, chunk_size: int = 512, prefix_cache: PrefixCache | None = None,
                 speculative: bool = False, state_budget: int | None = None) -> None:
        """`state_budget`: bytes the decode states of running requests may take together (None: no limit
        beyond `max_batch`); each request reserves what its prompt plus `max_tokens` can grow to."""
        self.model, self.tokenizer = model, tokenizer
        self.args = model.args
        if max_context is not None:
            self.args.check_context(max_context)
        self.max_context = max_context or self.args.max_position_embeddings
        self.scheduler = Scheduler(max_batch, chunk_size, state_budget)
        self.device = model.embed.weight.device
        self.eos_id = self.args.eos_token_id
        self.prefix_cache = prefix_cache
        if speculative and not len(model.mtp):
            raise ValueError("speculative decoding needs the checkpoint's MTP block (mtp.0), which this one lacks")
        self.drafter = MtpDrafter(model) if speculative else None
        self._live: dict[int, tuple[Request, _Live]] = {}
        self._backlog: dict[int, list[Event]] = {}  # events stepped out for requests other streams drive
        self.memory_plan: str | None = None  # set by from_pretrained: the plan's text, for printing
        self.kernels = kernels.REFERENCE  # set by from_pretrained (kernels.install): what runs behind `ops`

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "auto", dtype: torch.dtype = torch.bfloat16,
                        max_context: int | None = None, max_batch: int = 8, chunk_size: int = 512,
                        simulate_quant: bool = True, available: int | None = None, speculative: bool = False,
                        prefix_cache_dir: Path | None = None, prefix_cache_ram: int = 1 << 30) -> Engine:
        """`device`: "auto" (a CUDA device when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N".
        `dtype`: the activations' and decode state's (BF16 as the reference; FP32 doubles the state's bytes
        and on the CPU decodes no faster). `available`: bytes free for weights + decode state (default: what
        the device has free now).
        `speculative`: draft with the MTP block. `prefix_cache_dir`: keep prefix snapshots on disk too."""
        # Refuse before reading any weight when weights + decode state cannot fit (MemoryPlanError).
        device = devices.resolve(device)
        mem = plan_checkpoint(path, max_context, max_batch, dtype.itemsize, available, device, chunk_size)
        if mem is not None:
            if max_context is not None:
                mem.args.check_context(max_context)
            mem.check()
        if device.type == "cpu":
            release_large_blocks()
        model = load_model(path, device=device, dtype=dtype, simulate_quant=simulate_quant)
        kernel_line = kernels.install(device)
        tokenizer = model_tokenizer(Path(path), model.args.vocab_size)
        # Snapshots depend on the weights, the rounding, the dtype and whether MTP state is kept.
        key = model_key(Path(path), simulate_quant, dtype) + (":mtp" if speculative else "")
        cache = PrefixCache(model.args, key, dtype, device, ram_bytes=prefix_cache_ram, disk_dir=prefix_cache_dir)
        budget = None if mem is None else max(mem.available - mem.weights, 0)
        engine = cls(model, tokenizer, max_context, max_batch, chunk_size, cache, speculative, budget)
        engine.memory_plan = mem.describe() if mem is not None else None
        engine.kernels = kernel_line
        return engine

    # ---- requests ----------------------------------------------------------------------------------
    def check(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None) -> int:
        """Raise what `add_request` would refuse (empty prompt, over the context, ids outside the
        vocabulary, a decode state that could never fit); returns the bytes the request reserves.
        Reads only configuration, so any thread may call it."""
        prompt = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids
        params = params or SamplingParams()
        if not len(prompt):
            raise ValueError("the prompt is empty: at least one token is needed")
        if len(prompt) >= self.max_context:
            raise ContextLimitError(
                f"the prompt is {len(prompt)} tokens but the context holds {self.max_context} "
                f"(including at least one generated token); shorten the prompt or raise the context")
        vocab = self.args.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        budget = self.scheduler.state_budget
        if budget is None:
            return 0
        tokens = min(len(prompt) + params.max_tokens, self.max_context)
        reserve = state_bytes(self.args, tokens, dtype_bytes=self.model.dtype.itemsize)
        if reserve > budget:
            raise MemoryPlanError(
                f"this request's decode state would reach {reserve / 2**30:.2f} GiB ({tokens:,} tokens) "
                f"but {budget / 2**30:.2f} GiB is left beside the weights; lower max_tokens or the prompt")
        return reserve

    def add_request(self, prompt_ids: Sequence[int] | torch.Tensor, params: SamplingParams | None = None,
                    progress: Progress | None = None, cache_prefix: int | Sequence[int] | None = None, *,
                    cache_salt: str = "", keep_output: bool = False) -> int:
        """Queue a prompt; returns the request id. Refuses prompts over the context before any work.

        `cache_prefix`: also keep a snapshot after that many prompt tokens (or after each of several
        such lengths: e.g. everything before a question), so a later prompt sharing them starts there.
        `keep_output`: also keep one when the request finishes, after its prompt and output (a
        conversation's next turn starts there).
        `cache_salt` isolates these snapshots: only requests with the same salt find them.
        """
        prompt = [int(t) for t in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
        params = params or SamplingParams()
        req = Request(prompt=prompt, params=params)
        req.reserve = self.check(prompt, params)
        live = _Live(params, new_generator(params.seed), TextStream(self.tokenizer) if self.tokenizer else None,
                     StopMatcher(params.stop), progress, salt=cache_salt, keep_output=keep_output)
        if self.prefix_cache is not None:
            # At least the last prompt token must run: its logits give the first new token.
            n, state = self.prefix_cache.lookup(prompt[:-1], cache_salt)
            if state is not None:
                req.state, req.prefilled, live.cached = state, n, n
                state.reserve(self.args, min(len(prompt) + params.max_tokens, self.max_context))
            points = [cache_prefix] if isinstance(cache_prefix, int) else list(cache_prefix or [])
            req.cache_points = sorted({c for c in (*points, len(prompt)) if c and n < c <= len(prompt)})
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
        tokens, states, lengths, runs, marks = [], [], [], [], []
        for req, n in plan:
            live = self._live[req.id][1]
            if req.state is None:
                req.state = SeqState.new(self.args, self.model.dtype, self.device)
                req.state.reserve(self.args, min(len(req.prompt) + req.params.max_tokens, self.max_context))
            run = req.prompt[req.prefilled : req.prefilled + n] if req.in_prefill else live.pending + live.draft
            # A verify step may be partly undone: remember what the drafted tokens will overwrite.
            marks.append(req.state.mark(len(run)) if live.draft else None)
            runs.append((req.state.pos, run))
            tokens.extend(run)
            states.append(req.state)
            lengths.append(len(run))
        h = self._forward(plan, tokens, states, lengths)
        # Logits where tokens are decided: the last position, or every verified position.
        rows, offs, off = [], [], 0
        for (req, _), (_, run) in zip(plan, runs, strict=True):
            k = len(self._live[req.id][1].draft) if not req.in_prefill else 0
            offs.append(len(rows))
            rows.extend(range(off + len(run) - 1 - k, off + len(run)))
            off += len(run)
        # Tokens are decided on the CPU (the samplers' generators and the grammar masks live there): one copy
        # of a few rows of logits a step.
        logits = self.model.head_logits(h[torch.tensor(rows, device=self.device)]).cpu()
        mtp_items, mtp_owners, to_store, off = [], [], [], 0
        for i, ((req, _), (start, run)) in enumerate(zip(plan, runs, strict=True)):
            live = self._live[req.id][1]
            seg_h, off = h[off : off + len(run)], off + len(run)
            if req.in_prefill:
                req.prefilled += len(run)
                if live.progress:
                    live.progress(req.prefilled, len(req.prompt))
                if self.prefix_cache is not None and req.prefilled in req.cache_points:
                    to_store.append((req.prompt[: req.prefilled], req.state, live.salt))
                if req.in_prefill:
                    mtp_items.append((req.state, start, seg_h, run + [req.prompt[req.prefilled]]))
                    mtp_owners.append(None)
                    continue
                new, infos = self._decide(req, live, logits[offs[i] : offs[i] + 1], [])
                valid, run = len(run), run + new
            else:
                old = live.pending
                new, infos = self._decide(req, live, logits[offs[i] : offs[i] + 1 + len(live.draft)], live.draft)
                accepted = len(new) - 1
                valid = len(old) + accepted
                if live.draft and accepted < len(live.draft):  # undo the rejected drafts (and re-run `old`)
                    req.state.rollback(marks[i])
                    live.pending = old + new
                run = old + new
            finished = self._emit(req, live, new, infos)
            if not finished and self.drafter is not None:
                mtp_items.append((req.state, start, seg_h[:valid], run))
                mtp_owners.append(live)
            live.draft = []
        if self.drafter is not None and mtp_items:
            for live, draft in zip(mtp_owners, self.drafter.catch_up(mtp_items), strict=True):
                if live is not None and draft is not None:
                    live.draft = [draft]
        for prefix, state, salt in to_store:  # after MTP caught up, so a restored state can keep drafting
            self.prefix_cache.store(prefix, state, salt)
        return self._drain()

    def _forward(self, plan: list[tuple[Request, int]], tokens: list[int], states: list[SeqState],
                 lengths: list[int]) -> torch.Tensor:
        """The step's streams [T, n, D], in plan order, from forward passes that make each request's result
        independent of what else is in the step: every prompt chunk alone, decode rows together in passes
        of at most `kernels.ROW_KERNEL_MAX` rows. Within a pass the rows of different sequences meet only
        in ops that compute each row the same way whatever the other rows (the FP8/FP4 row kernel up to
        that many rows, `dense_linear`, per-row norms and element-wise ops); a chunk's rows go through
        GEMMs whose blocking depends on the number of rows, so a chunk shares its pass with nothing.
        With the rounding on, any such difference would change the tokens a request generates."""
        passes, i = [], 0
        while i < len(plan):
            j, rows = i + 1, lengths[i]
            if not plan[i][0].in_prefill:
                while j < len(plan) and not plan[j][0].in_prefill and rows + lengths[j] <= kernels.ROW_KERNEL_MAX:
                    rows += lengths[j]
                    j += 1
            passes.append((i, j, rows))
            i = j
        outs, off = [], 0
        for i, j, rows in passes:
            run = torch.tensor(tokens[off : off + rows], device=self.device)
            outs.append(self.model(run, states[i:j], lengths[i:j]))
            off += rows
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _decide(self, req: Request, live: _Live, logits: torch.Tensor, draft: list[int]
                ) -> tuple[list[int], list[TokenLogprob | None]]:
        """New tokens from logits rows: one sampled token, or the verified drafts plus one."""
        history = req.output
        if not draft:
            token, info = sample(logits[-1], live.params, history, live.generator)
            live.pending = [token]
            return [token], [info]
        new, infos, accepted = verify(logits, draft, live.params, history, live.generator)
        self.drafter.stats.drafted += len(draft)
        self.drafter.stats.accepted += accepted
        live.pending = [new[-1]]
        return new, infos

    def _emit(self, req: Request, live: _Live, new: list[int], infos: list[TokenLogprob | None]) -> bool:
        """Append decided tokens one by one, stopping at the first that ends the request (any() is lazy)."""
        return any(self._accept(req, live, token, info) for token, info in zip(new, infos, strict=True))

    def _accept(self, req: Request, live: _Live, token: int, info: TokenLogprob | None) -> bool:
        p = live.params
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
            self._keep(req, live)
            req.state = None
        live.events.append(Event(req.id, token, shown, info, reason, live.cached, live.stops.hit))
        return reason is not None

    def _keep(self, req: Request, live: _Live) -> None:
        """Snapshot a finished request's prompt + output (all but the last token, which never ran)."""
        done = req.prompt + req.output[:-1]
        if live.keep_output and self.prefix_cache is not None and req.state is not None \
                and req.state.pos == len(done) and len(done) > len(req.prompt):
            self.prefix_cache.store(done, req.state, live.salt)

    def cached(self, request_id: int) -> int:
        """Prompt tokens a live request took from the prefix cache."""
        entry = self._live.get(request_id)
        return entry[1].cached if entry else 0

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
               progress: Progress | None = None, cache_prefix: int | None = None) -> Iterator[Event]:
        """Events of one request as its tokens are decided. Closing the iterator aborts the request."""
        rid = self.add_request(prompt_ids, params, progress, cache_prefix)
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
                 progress: Progress | None = None, cache_prefix: int | None = None) -> GenerationResult:
        ids, texts, lps, reason, cached = [], [], [], "abort", 0
        prompt_len = len(prompt_ids)
        for ev in self.stream(prompt_ids, params, progress, cache_prefix):
            cached = ev.cached_tokens
            if ev.token_id >= 0:
                ids.append(ev.token_id)
            texts.append(ev.text)
            if ev.logprob is not None:
                lps.append(ev.logprob)
            reason = ev.finish_reason or reason
        return GenerationResult(ids, "".join(texts), reason, Usage(prompt_len, len(ids), cached), lps)
