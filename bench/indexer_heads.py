"""Speed of the lightning-indexer kernel (csrc/cpu/indexer.cpp) by the indexer's head count.

    python bench/indexer_heads.py [--heads 4 8 16 64] [--reps 5] [--threads 2] [--dtype bfloat16]

S * H = 16384 query-heads against T = 16384 keys of D = 128 (q, keys in `--dtype`); GMAC/s = S * H * T * D /
seconds, the best of `--reps` runs. DeepSeek-V4 has 64 indexer heads, the tiny/bench models 4.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from v4cli.runtime import kernels  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, nargs="+", default=[4, 8, 16, 64])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--qh", type=int, default=16384, help="S * H")
    p.add_argument("--keys", type=int, default=16384)
    p.add_argument("--dim", type=int, default=128)
    a = p.parse_args()
    print(kernels.install(), file=sys.stderr)
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(a.keys, a.dim, generator=g).to(dtype)
    for h in a.heads:
        s = a.qh // h
        q = torch.randn(s, h, a.dim, generator=g).to(dtype)
        w = torch.randn(s, h, generator=g) * (a.dim**-0.5 * h**-0.5)
        kernels.indexer_scores(q, w, keys)  # warm-up
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            kernels.indexer_scores(q, w, keys)
            best = min(best, time.perf_counter() - t)
        print(f"H={h:3d} S={s:5d}: {s * h * a.keys * a.dim / best / 1e9:6.1f} GMAC/s ({best * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
