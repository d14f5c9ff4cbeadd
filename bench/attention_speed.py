"""Speed of the sparse-attention and lightning-indexer kernels (csrc/cpu/attention.cpp, indexer.cpp) against their
PyTorch twins.

    python bench/attention_speed.py [--ctx 32768] [--chunk 4096] [--dtype float32] [--reps 3] [--threads N]
                                    [--cpu-time] [--no-prefill]

DeepSeek-V4's shapes: 64 heads x 512 (window 128, top-k 512; HCA reads ctx/128 entries in place), indexer
64 heads x 128 over ctx/4 keys. Decode is one query row at position ctx; the prefill chunk is `--chunk` query rows
ending at ctx (the indexer called in the row blocks the Indexer uses, 2^24 / keys rows at a time). Random inputs;
each figure is the best of `--reps` runs (the twin's prefill chunk: of 1, it is slow). Kernel and twin run in the
same process, one after the other; the ratio is twin time / kernel time. On a shared machine `--threads 1
--cpu-time` (process CPU time instead of wall time) is the steadier comparison: with 2 threads on 2 busy cores
either side can wait on a descheduled thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from v4cli.runtime import kernels, ops_ref  # noqa: E402

H, D, WINDOW, TOPK, HCA = 64, 512, 128, 512, 128
IH, ID, CSA = 64, 128, 4


CLOCK = time.perf_counter


def best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return min(times)


def attention_inputs(S: int, ctx: int, dtype: torch.dtype, hca: bool, g: torch.Generator):
    """Query rows at positions ctx-S..ctx-1: the window (ring + chunk) and, for CSA, top-k picks among the
    closed entries (gathered after the window rows, as attention.py does); for HCA the dense entries."""
    start = ctx - S
    n_prev = min(start, WINDOW - 1)
    qi = torch.arange(S).unsqueeze(1)
    win = qi + n_prev - WINDOW + 1 + torch.arange(WINDOW).unsqueeze(0)
    idx = win.masked_fill(win < 0, -1)
    n_rows = n_prev + S
    dense = limit = None
    if hca:
        dense = torch.randn(ctx // HCA, D, generator=g).to(dtype)
        limit = (torch.arange(start, start + S) + 1) // HCA
    else:
        n_entries = ctx // CSA
        picks = torch.randint(0, n_entries, (S, TOPK), generator=g)
        used, remap = torch.unique(picks, return_inverse=True)
        idx = torch.cat([idx, remap + n_rows], dim=1)
        n_rows += used.numel()
    q = torch.randn(S, H, D, generator=g).to(dtype)
    kv = torch.randn(n_rows, D, generator=g).to(dtype)
    sink = torch.randn(H, generator=g)
    return q, kv, sink, idx, D**-0.5, dense, limit


def indexer_calls(S: int, ctx: int, dtype: torch.dtype, g: torch.Generator):
    n = ctx // CSA
    q = torch.randn(S, IH, ID, generator=g).to(dtype)
    w = torch.randn(S, IH, generator=g) * (ID**-0.5 * IH**-0.5)
    keys = torch.randn(n, ID, generator=g).to(dtype)
    step = max(1, (1 << 24) // n)

    def run(fn: Callable) -> None:
        for s0 in range(0, S, step):
            fn(q[s0 : s0 + step], w[s0 : s0 + step], keys)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--cpu-time", action="store_true", help="time by process CPU time (for --threads 1)")
    ap.add_argument("--no-prefill", action="store_true", help="decode only (the twin's prefill chunk is slow)")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["V4_KERNELS"] = "1"
    print(kernels.install())
    dtype = getattr(torch, args.dtype)
    cpu = platform.processor() or platform.machine()
    clock = "CPU" if args.cpu_time else "wall"
    print(f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}, ctx {args.ctx}, "
          f"chunk {args.chunk}, {clock} time, load average {os.getloadavg()[0]:.1f}")
    g = torch.Generator().manual_seed(0)
    rows = [(1, args.reps * 5)] + ([] if args.no_prefill else [(args.chunk, args.reps)])  # decode, prefill chunk
    print(f"{'op':<26} {'rows':>6} {'kernel ms':>10} {'twin ms':>10} {'twin/kernel':>12}")
    for S, reps in rows:
        twin_reps = reps if S == 1 else 1
        for hca in (False, True):
            inp = attention_inputs(S, args.ctx, dtype, hca, g)
            got = kernels.sparse_attention(*inp)
            want = ops_ref.sparse_attention(*inp)
            err = (got.float() - want.float()).abs().max().item()
            tk = best(lambda: kernels.sparse_attention(*inp), reps)  # noqa: B023
            tt = best(lambda: ops_ref.sparse_attention(*inp), twin_reps)  # noqa: B023
            name = f"sparse_attention {'HCA' if hca else 'CSA'}"
            print(f"{name:<26} {S:>6} {tk * 1e3:>10.2f} {tt * 1e3:>10.2f} {tt / tk:>11.2f}x  (max err {err:.1e})")
        run = indexer_calls(S, args.ctx, dtype, g)
        tk = best(lambda: run(kernels.indexer_scores), reps)  # noqa: B023
        tt = best(lambda: run(ops_ref.indexer_scores), twin_reps)  # noqa: B023
        print(f"{'indexer_scores':<26} {S:>6} {tk * 1e3:>10.2f} {tt * 1e3:>10.2f} {tt / tk:>11.2f}x")


if __name__ == "__main__":
    main()
