"""Memory plan: bytes of the weights and of the decode state, computed from the config before loading.

Everything here is arithmetic on `ModelArgs` (no model is built), so the engine can refuse a context or
batch size that cannot fit before it reads a single weight, and say what would fit instead.

Decode-state formats (architecture.md §3.3):
- "reference": BF16, head_dim*2 B per main entry (1024 at 512), index_head_dim*2 B per indexer key (256).
- "fp8": the serving "fp8_ds_mla" layout, 584 B per main entry (448 FP8 nope + 64 BF16 rope + 7 UE8M0
  scales + 1 pad) and 132 B per indexer key (128 FP8 + FP32 scale).
- "mxfp4-indexer": 584 B main entries and 68 B MXFP4 indexer keys (64 B e2m1 + 4 UE8M0 scales).
- "ours": what `cache.SeqState` holds: ring, entries and indexer keys at the model dtype, compressor rows FP32.

Reading of §3.3: its entry counts and totals are the compressed entries plus the rings of the *main* layers
only (43 rings for Flash, 61 for Pro): no MTP ring and no compressor partial state (both listed apart in
its notes). Its B-per-token figures match those bytes exactly; its GiB figures are those bytes rounded to
3 decimals and then to 2, half up (Flash mxfp4 3.4349 -> 3.435 -> 3.44, Pro reference 9.6246 -> 9.63).
`state_bytes(..., mtp=False, partial=False)` is that reading; the defaults count everything we allocate.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .args import ModelArgs

if TYPE_CHECKING:
    from .weights import Reading

GiB = 1 << 30
FORMATS = ("ours", "reference", "fp8", "mxfp4-indexer")


class MemoryPlanError(UserError, ValueError):
    """The weights plus the decode state do not fit; the message gives the numbers and what would fit."""


# ---- weights -------------------------------------------------------------------------------------------
def _linear(out: int, inp: int, fmt: str, dtype_bytes: int) -> int:
    """Bytes of one `model.linear.Linear` as it holds its weight (packed formats stay packed)."""
    if fmt == "fp8":  # e4m3 + one UE8M0 byte per 128x128 tile
        return out * inp + -(-out // 128) * -(-inp // 128)
    if fmt == "fp4":  # two e2m1 per byte + one UE8M0 byte per 32 along the input
        return out * inp // 2 + out * (inp // 32)
    return out * inp * dtype_bytes


def _compressor(a: ModelArgs, d: int, ratio: int) -> int:
    width = (2 if ratio == 4 else 1) * d  # CSA compresses overlapping windows: two halves per row
    return 2 * 2 * width * a.hidden_size + 4 * (ratio * width + d)  # wkv, wgate (BF16 as stored); ape, norm FP32


def _block(a: ModelArgs, layer: int, dtype_bytes: int, expert_fmt: str) -> int:
    D, H, hd, n = a.hidden_size, a.num_attention_heads, a.head_dim, a.hc_mult
    fmt = "fp8" if a.fp8_weights else "float"
    mix = (2 + n) * n
    total = 2 * 4 * (mix * n * D + mix + 3) + 2 * 4 * D  # hc_attn/hc_ffn (FP32), attn_norm/ffn_norm (FP32)
    total += _linear(a.q_lora_rank, D, fmt, dtype_bytes) + 4 * a.q_lora_rank  # wq_a, q_norm
    total += _linear(H * hd, a.q_lora_rank, fmt, dtype_bytes) + _linear(hd, D, fmt, dtype_bytes) + 4 * hd
    total += _linear(a.o_groups * a.o_lora_rank, H * hd // a.o_groups, fmt, dtype_bytes)  # wo_a
    total += _linear(D, a.o_groups * a.o_lora_rank, fmt, dtype_bytes) + 4 * H  # wo_b, attn_sink
    ratio = a.compress_ratios[layer]
    if ratio:
        total += _compressor(a, hd, ratio)
    if ratio == 4:  # the indexer: wq_b, weights_proj (model dtype) and its own compressor
        ihd, ih = a.index_head_dim, a.index_n_heads
        total += _linear(ih * ihd, a.q_lora_rank, fmt, dtype_bytes) + dtype_bytes * ih * D + _compressor(a, ihd, ratio)
    E, inter = a.n_routed_experts, a.moe_intermediate_size
    total += 2 * E * D  # gate.weight, BF16 as stored
    total += 8 * a.vocab_size * a.num_experts_per_tok if layer < a.num_hash_layers else 4 * E  # tid2eid / bias
    expert = lambda f: 2 * _linear(inter, D, f, dtype_bytes) + _linear(D, inter, f, dtype_bytes)  # noqa: E731
    return total + E * expert(expert_fmt) + expert(fmt)  # routed + the shared expert


def weight_bytes(args: ModelArgs, dtype_bytes: int = 2, expert_fmt: str | None = None) -> int:
    """Bytes of every buffer of `Transformer(args, dtype=<dtype_bytes wide>)`, MTP block included.

    `expert_fmt` overrides the routed experts' storage as `load_model` does ("float" for transformers files).
    """
    a, D = args, args.hidden_size
    fmt = "fp8" if a.fp8_weights else "float"
    expert_fmt = expert_fmt or ("fp4" if a.fp4_experts else fmt)
    hc_head = 4 * (a.hc_mult * a.hc_mult * D + a.hc_mult + 1)
    total = a.vocab_size * D * 2 * 2 + 4 * D + hc_head  # embed and head (BF16 as stored), norm, hc_head
    n = a.num_hidden_layers
    for layer in range(n + a.num_nextn_predict_layers):
        total += _block(a, layer, dtype_bytes, expert_fmt)
        if layer >= n:  # MTP: e_proj, h_proj, enorm/hnorm/norm, its own hc_head
            total += 2 * _linear(D, D, fmt, dtype_bytes) + 3 * 4 * D + hc_head
    return total


# ---- decode state --------------------------------------------------------------------------------------
def entry_sizes(args: ModelArgs, fmt: str, dtype_bytes: int = 2) -> tuple[int, int]:
    """(bytes per main kv entry, bytes per indexer key) in `fmt`."""
    hd, ihd, rope = args.head_dim, args.index_head_dim, args.qk_rope_head_dim
    if fmt == "ours":
        return hd * dtype_bytes, ihd * dtype_bytes
    if fmt == "reference":
        return hd * 2, ihd * 2
    nope = hd - rope
    main = -(-(nope + 2 * rope + nope // 64) // 8) * 8  # FP8 nope, BF16 rope, per-64 scales, 8-B aligned
    if fmt == "fp8":
        return main, ihd + 4
    if fmt == "mxfp4-indexer":
        return main, ihd // 2 + ihd // 32
    raise ValueError(f"unknown decode-state format {fmt!r}; use one of {', '.join(FORMATS)}")


def entry_counts(args: ModelArgs, context: int, mtp: bool = True) -> tuple[int, int]:
    """(main kv entries incl. the window rings, indexer keys) of one sequence at `context` tokens."""
    ratios = args.compress_ratios if mtp else args.compress_ratios[: args.num_hidden_layers]
    main = len(ratios) * args.sliding_window + sum(context // r for r in ratios if r)
    return main, sum(context // 4 for r in ratios if r == 4)


def partial_bytes(args: ModelArgs, fmt: str) -> int:
    """FP32 compressor rows of one sequence, constant in context.

    "ours": the most `cache.CompressorState` holds (m-1 tail rows, plus for CSA the m rows of the last
    closed window); other formats: the reference's kv_state/score_state ([2m, 2d] for CSA, [m, d] for HCA).
    """
    hca = [r for r in args.compress_ratios if r not in (0, 4)]
    rows_csa, rows_hca = (4 - 1 + 4, sum(hca) - len(hca)) if fmt == "ours" else (2 * 4, sum(hca))
    csa = args.compress_ratios.count(4) * rows_csa * 2 * (args.head_dim + args.index_head_dim)  # rows 2d wide
    return 2 * 4 * (csa + rows_hca * args.head_dim)  # kv and score, FP32


def state_bytes(args: ModelArgs, context: int, fmt: str = "ours", dtype_bytes: int = 2,
                mtp: bool = True, partial: bool = True) -> int:
    """Decode-state bytes of one sequence at `context` tokens (see the module docstring for §3.3)."""
    main_b, index_b = entry_sizes(args, fmt, dtype_bytes)
    main, index = entry_counts(args, context, mtp)
    return main * main_b + index * index_b + (partial_bytes(args, fmt) if partial else 0)


def workspace_bytes(args: ModelArgs, context: int, batch: int, chunk: int) -> int:
    """Transient GPU memory of the largest step (a prefill chunk, or a decode step of the whole batch): the
    biggest buffers alive at once, as FP32 (what the ops compute in), a quarter more for the caching allocator's
    rounding and fragmentation, and 256 MiB for library workspaces (cuBLAS) and the kernels' images. On the
    CPU these are small beside the host's memory and not counted."""
    a, rows = args, max(chunk, batch)
    streams = 3 * rows * a.hc_mult * a.hidden_size
    attn = 3 * rows * a.num_attention_heads * a.head_dim + 2 * (1 << 24)  # q, o; the ops' 64 MiB query blocks
    index = rows * a.index_n_heads * a.index_head_dim + rows * (context // 4)  # indexer q, its scores [rows, keys]
    moe = rows * (a.num_experts_per_tok + 1) * (2 * a.moe_intermediate_size + a.hidden_size)
    head = (batch + 1) * a.vocab_size
    return int(4 * (streams + max(attn, index, moe) + head) * 1.25) + (256 << 20)


# ---- the plan ------------------------------------------------------------------------------------------
def available_memory(device: object = "cpu") -> int:
    """Free bytes where the weights will live: CUDA's free memory, else the host's available memory."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


@dataclass
class MemoryPlan:
    args: ModelArgs = field(repr=False)
    context: int
    batch: int
    fmt: str
    dtype_bytes: int
    weights: int
    state_per_seq: int
    available: int
    workspace: int = 0  # transient step buffers (GPU plans only, see workspace_bytes)
    device: str = "cpu"

    @property
    def state(self) -> int:
        return self.state_per_seq * self.batch

    @property
    def total(self) -> int:
        return self.weights + self.state + self.workspace

    @property
    def headroom(self) -> int:
        return self.available - self.total

    def _state_at(self, context: int) -> int:
        return state_bytes(self.args, context, self.fmt, self.dtype_bytes)

    def max_context(self) -> int:
        """The largest context (a multiple of 1024, at most the planned one) that fits at this batch; 0 if none."""
        room = self.available - self.weights - self.workspace
        lo, hi = 0, self.context // 1024  # in units of 1024 tokens; state grows with context
        if room < self.batch * self._state_at(0):
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.batch * self._state_at(mid * 1024) <= room else (lo, mid - 1)
        return lo * 1024

    def max_batch(self) -> int:
        """The largest batch that fits at this context (0 if none)."""
        return max(0, (self.available - self.weights - self.workspace) // self.state_per_seq)

    def summary(self) -> dict[str, Any]:
        """The plan as data (`v4 show --json`), its text included."""
        return {"context": self.context, "device": self.device, "weights_bytes": self.weights,
                "state_bytes": self.state, "workspace_bytes": self.workspace, "total_bytes": self.total,
                "available_bytes": self.available, "fits": self.total <= self.available,
                "text": self.describe()}

    def describe(self) -> str:
        where = "" if self.device == "cpu" else f" on {self.device}"
        return "\n".join([
            f"memory plan{where}: {self.batch} x {self.context:,} tokens, decode state as {self.fmt!r} "
            f"({self.dtype_bytes}-byte model dtype)",
            f"  weights       {_gib(self.weights)}",
            f"  decode state  {_gib(self.state)} ({_gib(self.state_per_seq)} per sequence)",
            *([f"  workspace     {_gib(self.workspace)}"] if self.workspace else []),
            f"  total         {_gib(self.total)} of {_gib(self.available)} available "
            f"(headroom {_gib(self.headroom)})",
        ])

    def check(self) -> MemoryPlan:
        """Raise MemoryPlanError when the plan does not fit; returns self otherwise."""
        if self.total <= self.available:
            return self
        ws = f" + workspace {_gib(self.workspace)}" if self.workspace else ""
        where = "" if self.device == "cpu" else f" on {self.device}"
        need = (f"needs {_gib(self.total)}{where} (weights {_gib(self.weights)} + decode state {_gib(self.state)} "
                f"for {self.batch} x {self.context:,} tokens{ws}) but only {_gib(self.available)} is available")
        cpu = "" if self.device == "cpu" else "; --device cpu runs it in host memory"
        if self.weights + self.workspace > self.available:
            raise MemoryPlanError(f"the model does not fit: it {need}; even the weights alone do not fit{cpu}")
        ctx, batch = self.max_context(), self.max_batch()
        fits = []
        if ctx:
            fits.append(f"a context of {ctx:,} tokens at batch {self.batch}")
        if batch:
            fits.append(f"batch {batch} at {self.context:,} tokens")
        if not fits:  # nothing at this batch or this context: offer one sequence at a shorter context
            one = dataclasses.replace(self, batch=1).max_context()
            fits.append(f"a context of {one:,} tokens at batch 1" if one else "no context even at batch 1")
        raise MemoryPlanError(f"the model does not fit: it {need}. What would fit: {' or '.join(fits)}{cpu}")


def plan(args: ModelArgs, context: int, batch: int, dtype_bytes: int = 2, fmt: str = "ours",
         available: int | None = None, expert_fmt: str | None = None, device: object = "cpu",
         chunk: int = 512) -> MemoryPlan:
    """The memory plan of `batch` sequences of `context` tokens on `device` (a CUDA device's plan counts the
    step's workspace too); `available` defaults to what that device has free."""
    on_gpu = str(device).startswith("cuda")
    return MemoryPlan(args, context, batch, fmt, dtype_bytes, weight_bytes(args, dtype_bytes, expert_fmt),
                      state_bytes(args, context, fmt, dtype_bytes),
                      available_memory(device) if available is None else available,
                      workspace_bytes(args, context, batch, chunk) if on_gpu else 0, str(device))


def plan_checkpoint(path: str | Path, context: int | None, batch: int, dtype_bytes: int,
                    available: int | None = None, device: object = "cpu", chunk: int = 512) -> MemoryPlan | None:
    """The plan for a checkpoint folder as `load_model` will hold it; None when the folder cannot be read
    (then `load_model` reports why)."""
    from .checkpoint import CheckpointError
    from .weights import survey  # the on-disk form decides the bytes

    try:
        r = survey(path)
    except CheckpointError:
        return None
    return plan_reading(r, context, batch, dtype_bytes, available, device, chunk)


def plan_reading(r: Reading, context: int | None, batch: int, dtype_bytes: int, available: int | None = None,
                 device: object = "cpu", chunk: int = 512) -> MemoryPlan:
    """`plan_checkpoint` for a folder whose headers are already read (`weights.survey`, `read_checkpoint`)."""
    from .weights import kept_as_stored

    mp = plan(r.args, context or r.args.max_position_embeddings, batch, dtype_bytes, "ours", available, r.expert_fmt,
              device, chunk)
    # the embedding, head, compressors and routers stay as stored, which `weight_bytes` counts as BF16: an FP32
    # export holds twice that
    wide = sum(r.ckpt.nbytes(n) // 2 for n, off in r.match.names.items()
               if kept_as_stored(off) and n in r.ckpt.where and r.ckpt.dtype_name(n) == "F32")
    return dataclasses.replace(mp, weights=mp.weights + wide) if wide else mp
