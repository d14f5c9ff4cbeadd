"""Weight streaming speed of the FP8/FP4 linear kernels (csrc/cpu/linear.cpp) at DeepSeek-V4-Flash's real shapes.

    python bench/kernel_speed.py [--rows 1,4,32] [--reps 5] [--threads 1,2] [--twin/--no-twin]

For 1, 4 and 32 input rows (decode) each kernel is timed in GB/s of weight bytes read (packed weight + scales;
the output and the input are small), cycling over enough copies of the weight that they do not fit the last-level
cache, as a decode step reads them. In the same run it measures the streaming ceiling: a BF16 GEMV through torch
over ~1 GiB and a plain `torch.sum` over the same bytes; "% ceil" is the kernel over the better of the two. The
machine may be shared, so the run goes in `--reps` rounds, each timing every cell once (one pass over its copies),
and a cell's figure is its best round, with the median after it: a competing process spoils the cells it overlaps
in one round, not the same cells in every round. The PyTorch twin (ops_ref: dequantize, then one GEMM) is timed
once per cell, best of 2. The 1-row case is also timed with each thread count in `--threads`
(torch.set_num_threads), and the speed-up is printed. Needs ~3 GB of RAM for the weight copies.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from v4cli.runtime import kernels, ops_ref  # noqa: E402

GB = 1e9
CACHE_BUST = 128 << 20  # bytes of weight copies cycled per cell: 4x this machine's 32 MiB L3
CEIL_BYTES = 1 << 30

# name, format, (N, K), act_quant as the engine calls it (simulate_quant=True; wo_a's groups without rounding)
SHAPES = [
    ("attn.wq_a", "fp8", (1024, 4096), True),
    ("attn.wq_b", "fp8", (32768, 1024), True),
    ("attn.wkv", "fp8", (512, 4096), True),
    ("attn.wo_a (1 group)", "fp8", (1024, 4096), False),
    ("attn.wo_b", "fp8", (4096, 8192), True),
    ("shared expert w1/w3", "fp8", (2048, 4096), True),
    ("shared expert w2", "fp8", (4096, 2048), True),
    ("expert w1/w3", "fp4", (2048, 4096), True),
    ("expert w2", "fp4", (4096, 2048), True),
]


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    simd = [f for f in flags.split() if f.startswith(("avx", "amx", "fma", "f16c", "sse4", "asimd", "sve"))]
    return f"{model}, {os.cpu_count()} CPUs; SIMD flags: {' '.join(simd) or '?'}"


def make_weights(fmt: str, n: int, k: int, copies: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(n * 7 + k)
    if fmt == "fp8":
        w = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
        w[(w & 0x7F) == 0x7F] = 0  # e4m3 NaN codes: a real weight has none
        s = torch.randint(118, 127, (-(-n // 128), -(-k // 128)), dtype=torch.uint8, generator=g)
        one = (w.view(torch.float8_e4m3fn), s.view(torch.float8_e8m0fnu))
    else:
        w = torch.randint(-128, 128, (n, k // 2), dtype=torch.int8, generator=g)
        s = torch.randint(118, 127, (n, k // 32), dtype=torch.uint8, generator=g)
        one = (w, s.view(torch.float8_e8m0fnu))
    return [one] + [(one[0].clone(), one[1].clone()) for _ in range(copies - 1)]


def nbytes(w: torch.Tensor, s: torch.Tensor) -> int:
    return w.numel() * w.element_size() + s.numel() * s.element_size()


def time_pass(fn, args_list) -> float:
    """Seconds per call over one pass through args_list."""
    t0 = time.perf_counter()
    for a in args_list:
        fn(*a)
    return (time.perf_counter() - t0) / len(args_list)


def ceiling_cells():
    """GB/s of a BF16 GEMV over ~1 GiB (torch.nn.functional.linear, one row) and of torch.sum over it."""
    k = 8192
    w = torch.empty(CEIL_BYTES // (2 * k), k, dtype=torch.bfloat16).fill_(0.01)
    x = torch.full((1, k), 0.5, dtype=torch.bfloat16)
    b = w.numel() * 2
    return {"gemv": (lambda: torch.nn.functional.linear(x, w), b), "sum": (lambda: torch.sum(w), b)}


def fmt_gbs(v: list[float]) -> str:
    return f"{max(v):.2f} ({statistics.median(v):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,4,32")
    ap.add_argument("--reps", type=int, default=5, help="rounds; each times every cell once")
    ap.add_argument("--threads", default="1,2", help="thread counts for the 1-row scaling columns")
    ap.add_argument("--twin", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--only", default="", help="comma-separated substrings of the shape names to keep")
    a = ap.parse_args()
    rows_list = [int(r) for r in a.rows.split(",")]
    thread_list = [int(t) for t in a.threads.split(",") if t]
    shapes = [s for s in SHAPES if not a.only or any(o in s[0] for o in a.only.split(","))]
    line = kernels.install()
    if not line.startswith("C++"):
        sys.exit(line)
    threads0 = torch.get_num_threads()
    all_threads = sorted(set(thread_list + [threads0]))

    # Every cell is timed once per round, rounds after rounds: a competing process slows the cells it overlaps
    # in one round, not the same cells in every round, and each cell keeps its best.
    weights = {}
    for name, fmt, (n, k), _ in shapes:
        size = n * k if fmt == "fp8" else n * k // 2 + n * k // 32
        weights[name] = make_weights(fmt, n, k, max(2, -(-CACHE_BUST // size)))
    inputs = {r: {} for r in rows_list}
    ceil = ceiling_cells()
    ceil_t: dict[tuple[str, int], list[float]] = {(c, t): [] for c in ceil for t in all_threads}
    cells: dict[tuple[str, int], list[float]] = {(s[0], r): [] for s in shapes for r in rows_list}
    scale_t: dict[tuple[str, int], list[float]] = {(s[0], t): [] for s in shapes for t in thread_list}
    for rnd in range(a.reps + 1):  # round 0 warms up
        for t in all_threads:
            torch.set_num_threads(t)
            for c, (fn, b) in ceil.items():
                dt = time_pass(fn, [()])
                if rnd:
                    ceil_t[(c, t)].append(b / dt / GB)
        torch.set_num_threads(threads0)
        for name, fmt, (_, k), aq in shapes:
            op = kernels.fp8_linear if fmt == "fp8" else kernels.fp4_linear
            ws, b = weights[name], nbytes(*weights[name][0])
            for rows in rows_list:
                x = inputs[rows].setdefault(k, torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)))
                dt = time_pass(op, [(x, w, s, aq) for w, s in ws])
                if rnd:
                    cells[(name, rows)].append(b / dt / GB)
            x = torch.randn(1, k, generator=torch.Generator().manual_seed(1))
            for t in thread_list:
                torch.set_num_threads(t)
                dt = time_pass(op, [(x, w, s, aq) for w, s in ws])
                if rnd:
                    scale_t[(name, t)].append(b / dt / GB)
            torch.set_num_threads(threads0)
    twin = {}
    if a.twin:
        for name, fmt, (_, k), aq in shapes:
            op = ops_ref.fp8_linear if fmt == "fp8" else ops_ref.fp4_linear
            b = nbytes(*weights[name][0])
            for rows in rows_list:
                args = [(inputs[rows][k], *weights[name][0], aq)]
                time_pass(op, args)
                twin[(name, rows)] = max(b / time_pass(op, args) / GB for _ in range(2))

    def best_ceiling(t: int) -> float:
        return max(max(ceil_t[(c, t)]) for c in ceil)

    c0 = best_ceiling(threads0)
    print("## FP8/FP4 linear kernels: weight streaming (GB/s of weight bytes)\n")
    print(f"- CPU: {cpu_line()}")
    print(f"- torch {torch.__version__}, {threads0} threads, torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {line}")
    print(f"- streaming ceiling ({threads0} threads, best (median) of {a.reps} rounds): BF16 GEMV over 1 GiB "
          f"{fmt_gbs(ceil_t[('gemv', threads0)])} GB/s, torch.sum over it {fmt_gbs(ceil_t[('sum', threads0)])} GB/s; "
          f"ceiling = **{c0:.2f} GB/s**")
    print(f"- kernel cells: best (median) of {a.reps} rounds, each a pass over {CACHE_BUST >> 20} MiB of weight "
          "copies (more than the last-level cache); twin: ops_ref (dequantize + GEMM), best of 2\n")
    print("| weight | fmt | N x K | act_quant | MB | rows | kernel GB/s | % ceil | twin GB/s | kernel / twin |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, fmt, (n, k), aq in shapes:
        b = nbytes(*weights[name][0])
        for rows in rows_list:
            got = cells[(name, rows)]
            tw = twin.get((name, rows))
            print(f"| {name} | {fmt} | {n} x {k} | {'yes' if aq else 'no'} | {b / 1e6:.1f} | {rows} | {fmt_gbs(got)} "
                  f"| {100 * max(got) / c0:.0f}% | {f'{tw:.2f}' if tw else '-'} | "
                  f"{f'{max(got) / tw:.0f}x' if tw else '-'} |")
    if len(thread_list) > 1:
        t_lo, t_hi = min(thread_list), max(thread_list)
        c_lo, c_hi = best_ceiling(t_lo), best_ceiling(t_hi)
        print(f"\n### 1 row: thread scaling ({t_lo} -> {t_hi} threads)\n")
        print(f"Ceiling (the better of the two reads): {c_lo:.2f} GB/s with {t_lo} thread(s), {c_hi:.2f} GB/s with "
              f"{t_hi} ({c_hi / c_lo:.2f}x).\n")
        print(f"| weight | fmt | N x K | GB/s, {t_lo} thr | % ceil | GB/s, {t_hi} thr | % ceil | speed-up |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for name, fmt, (n, k), _ in shapes:
            lo, hi = max(scale_t[(name, t_lo)]), max(scale_t[(name, t_hi)])
            print(f"| {name} | {fmt} | {n} x {k} | {lo:.2f} | {100 * lo / c_lo:.0f}% | {hi:.2f} "
                  f"| {100 * hi / c_hi:.0f}% | {hi / lo:.2f}x |")
    print(f"\n1-min load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs; above that, "
          "other processes competed)")


if __name__ == "__main__":
    main()
