"""What every section of the check shares: the model widths, random inputs, timers, the two ceilings, output
poisoning and the error measure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from v4cli.runtime import quant
from v4cli.runtime.args import ModelArgs
from v4cli.runtime.weights import FP8_CONFIG


@dataclass(frozen=True)
class Dims:
    """The widths the op inputs and the layer step are built at."""

    name: str
    hidden: int
    heads: int
    head_dim: int
    rope: int
    q_lora: int
    o_groups: int
    o_lora: int
    experts: int
    topk: int
    inter: int
    index_heads: int
    index_dim: int
    index_topk: int
    window: int
    hc: int
    vocab: int
    contexts: tuple[int, ...]  # tokens of context for attention inputs and the layer step
    decode: tuple[int, ...]  # rows of a decode step
    prefill: int  # rows of a prefill chunk
    ragged: int  # an odd row count (a chunk's tail)


FLASH = Dims("V4-Flash", hidden=4096, heads=64, head_dim=512, rope=64, q_lora=1024, o_groups=8, o_lora=1024,
             experts=256, topk=6, inter=2048, index_heads=64, index_dim=128, index_topk=512, window=128, hc=4,
             vocab=129280, contexts=(8192, 131072), decode=(1, 8, 32), prefill=512, ragged=77)
# --quick (the CPU dry run): tiny widths, the same code paths
QUICK = Dims("quick", hidden=256, heads=4, head_dim=128, rope=64, q_lora=128, o_groups=2, o_lora=128, experts=8,
             topk=2, inter=128, index_heads=4, index_dim=128, index_topk=16, window=128, hc=4, vocab=1024,
             contexts=(512,), decode=(1, 8, 32), prefill=64, ragged=13)


def model_args(d: Dims) -> ModelArgs:
    """Two layers, a CSA (ratio 4) and an HCA (ratio 128) one, no hash routing, FP8 weights and FP4 experts."""
    return ModelArgs(vocab_size=d.vocab, hidden_size=d.hidden, num_hidden_layers=2, num_hash_layers=0,
                     num_attention_heads=d.heads, head_dim=d.head_dim, qk_rope_head_dim=d.rope, q_lora_rank=d.q_lora,
                     o_groups=d.o_groups, o_lora_rank=d.o_lora, n_routed_experts=d.experts,
                     num_experts_per_tok=d.topk, moe_intermediate_size=d.inter, sliding_window=d.window,
                     compress_ratios=[4, 128, 0], index_n_heads=d.index_heads, index_head_dim=d.index_dim,
                     index_topk=d.index_topk, hc_mult=d.hc, quantization_config=dict(FP8_CONFIG), expert_dtype="fp4")


class Rng:
    """Seeded random inputs, drawn on the CPU (small) or on the device (large), returned on the device."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.Generator().manual_seed(seed)
        self.dev = torch.Generator(device=device).manual_seed(seed + 1)

    def randn(self, *shape: int, std: float = 1.0, dtype: torch.dtype = torch.float32, on_device: bool = False
              ) -> torch.Tensor:
        gen = self.dev if on_device else self.cpu
        t = torch.randn(*shape, generator=gen, device=gen.device) * std
        return t.to(device=self.device, dtype=dtype)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.cpu).to(self.device)

    def randint(self, low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.cpu).to(self.device)

    def fp8(self, n: int, k: int, on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A real FP8 weight [n, k] (e4m3 + 128x128 UE8M0 scales) quantized from a Gaussian."""
        w = self.randn(n, k, std=k**-0.5, on_device=on_device) if on_device else self._cpu_randn(n, k)
        with torch.device(w.device):  # quantize_fp8 allocates its padded tiles on the default device
            q, s = quant.quantize_fp8(w)
        return q.to(self.device), s.to(self.device)

    def fp4(self, n: int, k: int, on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A real FP4 weight [n, k] (packed e2m1, two per byte + UE8M0 per 32) quantized from a Gaussian."""
        w = self.randn(n, k, std=k**-0.5, on_device=on_device) if on_device else self._cpu_randn(n, k)
        q, s = quant.quantize_fp4(w)
        return q.to(self.device), s.to(self.device)

    def _cpu_randn(self, n: int, k: int) -> torch.Tensor:
        return torch.randn(n, k, generator=self.cpu) * k**-0.5


def nbytes(*items: Any) -> int:
    """Bytes of tensors (and lists of them); anything else counts nothing."""
    total = 0
    for t in items:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            total += nbytes(*t)
    return total


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (||out|| where ref is all zeros); NaN anywhere in out gives NaN."""
    o, r = out.double(), ref.double()
    num, den = torch.linalg.vector_norm(o - r).item(), torch.linalg.vector_norm(r).item()
    return num / den if den > 0 else num


class Bench:
    """Timing on one device: CUDA events on a GPU (each timed call after a write over more than the L2, so that
    its inputs come from memory, as in a decode step, and the host's launch work hides behind that write), the
    host's clock on the CPU. `time` returns the median in milliseconds."""

    def __init__(self, device: torch.device, warmup: int, reps: int, flush_bytes: int, poison_bytes: int) -> None:
        self.device, self.warmup, self.reps, self.poison_bytes = device, warmup, reps, poison_bytes
        self.cuda = device.type == "cuda"
        self._flush = torch.empty(flush_bytes if self.cuda else 0, dtype=torch.uint8, device=device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], flush: bool = True, reps: int | None = None,
             warmup: int | None = None) -> float:
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        self.sync()
        times = []
        for i in range(self.reps if reps is None else reps):
            if self.cuda:
                if flush:
                    self._flush.fill_(i & 0xFF)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                times.append((start, end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        self.sync()
        ms = [s.elapsed_time(e) for s, e in times] if self.cuda else [t * 1e3 for t in times]
        return statistics.median(ms)

    def poison(self) -> None:
        """Let the next outputs be carved from NaN-filled memory, so an element a kernel never writes shows up.

        Kernels allocate their outputs through torch's caching allocator: drop what it caches, allocate a large
        block and a set of small ones (requests up to 1 MiB come from a pool of their own), fill them with
        0xFF bytes (NaN in float32 and bfloat16 alike) and free them: they stay cached, and the only free memory
        the next allocations can take. The host allocator gives no such handle: nothing to do on the CPU."""
        if not self.cuda:
            return
        torch.cuda.empty_cache()
        blocks = [torch.empty(self.poison_bytes, dtype=torch.uint8, device=self.device)]
        blocks += [torch.empty(1 << 20, dtype=torch.uint8, device=self.device) for _ in range(64)]
        for b in blocks:
            b.fill_(0xFF)
        del blocks

    def context_ok(self) -> bool:
        """False once the CUDA context is lost (an illegal address is sticky: every later call fails)."""
        if not self.cuda:
            return True
        try:
            torch.cuda.synchronize(self.device)
            return torch.ones(4, device=self.device).sum().item() == 4.0
        except Exception:  # noqa: BLE001 - any failure here means the context is gone
            return False


@dataclass
class Ceilings:
    copy_bw: float  # bytes/s, read + written
    matmul_rate: float  # flop/s
    copy_bytes: int
    matmul_n: int
    matmul_dtype: str

    def floor(self, moved: int, flops: int) -> tuple[float, str]:
        """The larger of the two lower bounds (ms), and which one it is."""
        by_bytes, by_flops = moved / self.copy_bw * 1e3, flops / self.matmul_rate * 1e3
        return (by_bytes, "bytes") if by_bytes >= by_flops else (by_flops, "flops")


def measure_ceilings(bench: Bench, copy_bytes: int, n: int, reps: int) -> Ceilings:
    """A device-to-device copy (bytes read + written) and an n^3 matrix product on random data (bf16 on a GPU,
    float32 on the CPU, whose bf16 products are slow paths)."""
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    copy_ms, matmul_ms = _copy_ms(bench, copy_bytes, reps), _matmul_ms(bench, n, dtype, reps)
    return Ceilings(2 * copy_bytes / (copy_ms / 1e3), 2 * n**3 / (matmul_ms / 1e3), copy_bytes, n,
                    str(dtype).removeprefix("torch."))


def _copy_ms(bench: Bench, copy_bytes: int, reps: int) -> float:
    src = torch.randint(0, 256, (copy_bytes,), dtype=torch.uint8, device=bench.device)
    dst = torch.empty_like(src)
    return bench.time(lambda: dst.copy_(src), flush=False, reps=reps, warmup=3)


def _matmul_ms(bench: Bench, n: int, dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(n, n, device=bench.device).to(dtype)
    b = torch.randn(n, n, device=bench.device).to(dtype)
    return bench.time(lambda: a @ b, flush=False, reps=reps, warmup=3)


@dataclass
class Case:
    """One comparison of an op with its twin: the op's positional arguments (on the device) and what to expect."""

    op: str
    shape: str  # what the inputs are, in words: "wq_b 32768x1024 rows=8"
    dtype: str  # the activations' dtype: "bf16" or "f32"
    args: tuple[Any, ...]
    moved: int  # the fewest bytes the op must move (inputs read once, output written once)
    flops: int  # its matrix work
    timed: bool  # a real decode or prefill shape: timed too
    ref: Callable[..., Any] | None = None  # the reference; None: the twin on float64 upcasts of the float inputs
    ref_kind: str = "f64"

    @property
    def tol(self) -> float:
        return 1e-5 if self.dtype == "f32" else 1e-2


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
