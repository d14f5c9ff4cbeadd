"""The built-in tiny model over a very long prompt (default 2**20 = 1M tokens) on this CPU: chunked prefill
through the Engine, progress every few chunks, then the total time, the peak RSS and the decode state beside
the planned figure. Not part of CI.

The per-chunk time grows with the position (the lightning indexer scores every closed CSA entry and HCA
attends to all of its entries), so the estimate for a longer prompt fits chunk time = a + b * position to the
chunks measured here and sums it over the longer prompt, rather than scaling the total linearly.

    python bench/long_context.py [--tokens 1048576] [--chunk 2048] [--estimate 1048576] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SECTION = "## Long context (tiny model)"
MB = 1024 * 1024


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def planned_state(args: Any, ctx: int, dtype_bytes: int) -> tuple[int, str]:
    """(bytes, source): plan.state_bytes when that module exists, else the same arithmetic by hand."""
    try:
        from v4cli.runtime.plan import state_bytes

        return state_bytes(args, ctx, "ours", dtype_bytes), "plan.state_bytes"
    except ImportError:  # plan.py is another engineer's; without it, count rings, entries and indexer keys
        ratios = args.compress_ratios  # main layers then MTP, which is window-only
        ring = len(ratios) * args.sliding_window * args.head_dim
        entries = sum(ctx // r for r in ratios if r) * args.head_dim
        keys = sum(ctx // 4 for r in ratios if r == 4) * args.index_head_dim
        return (ring + entries + keys) * dtype_bytes, "by hand (no plan module)"


def fit_chunk_time(marks: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of chunk seconds = a + b * start position, from (start, seconds) pairs."""
    body = marks[2:] if len(marks) > 6 else marks  # the first chunks include warm-up
    n = len(body)
    mx = sum(p for p, _ in body) / n
    my = sum(s for _, s in body) / n
    var = sum((p - mx) ** 2 for p, _ in body)
    b = sum((p - mx) * (s - my) for p, s in body) / var if var else 0.0
    b = max(b, 0.0)  # contention from other processes can make a short run's slope negative: never extrapolate down
    return my - b * mx, b


def predict(a: float, b: float, tokens: int, chunk: int) -> float:
    return sum(a + b * start for start in range(0, tokens, chunk))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--every", type=int, default=8, help="print progress every N chunks")
    ap.add_argument("--estimate", type=int, default=1 << 20, help="also estimate the prefill time of this length")
    ap.add_argument("--ckpt", type=Path, default=HERE / "out" / "tiny-official")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = ap.parse_args()

    from v4cli.runtime.engine import Engine
    from v4cli.runtime.sampler import SamplingParams
    from v4cli.runtime.tiny import builtin_args, write_checkpoint

    if not (a.ckpt / "config.json").exists():
        write_checkpoint(a.ckpt, builtin_args(), seed=0)
    dtype = getattr(torch, a.dtype)
    eng = Engine.from_pretrained(a.ckpt, dtype=dtype, max_context=a.tokens + 8, max_batch=1, chunk_size=a.chunk)
    rss_loaded = peak_rss()
    prompt = torch.randint(0, eng.args.vocab_size, (a.tokens,), generator=torch.Generator().manual_seed(1))
    marks: list[tuple[int, float]] = []  # (chunk start, seconds of that chunk)
    last = [0, 0.0]
    end_state: dict[str, Any] = {}
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        now = time.perf_counter() - t0
        marks.append((last[0], now - last[1]))
        last[:] = [done, now]
        if done == total:  # the state is freed with the request's last event: read it now (bench only)
            st = next(r.state for r, _ in eng._live.values() if r.state is not None)
            end_state.update(nbytes=st.nbytes(), pos=st.pos,
                             entries=[(ls.comp.entries.n if ls.comp else 0, ls.index.entries.n if ls.index else 0)
                                      for ls in st.layers])
        if len(marks) % a.every == 0 or done == total:
            fa, fb = fit_chunk_time(marks)
            eta = predict(fa, fb, total, a.chunk) - predict(fa, fb, done, a.chunk)
            recent = sum(s for _, s in marks[-a.every :])
            print(f"{done:>9,} / {total:,} tokens  {now:7.1f} s  {min(a.every, len(marks)) * a.chunk / recent:7,.0f} "
                  f"tok/s now  ETA {max(eta, 0):6.0f} s  peak RSS {peak_rss() / MB:,.0f} MB", flush=True)

    res = eng.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), progress=progress)
    total_s = time.perf_counter() - t0
    assert res.usage.prompt_tokens == a.tokens
    peak = peak_rss()
    planned, source = planned_state(eng.args, a.tokens, dtype.itemsize)
    fa, fb = fit_chunk_time(marks)
    est = predict(fa, fb, a.estimate, a.chunk) if a.estimate != a.tokens else None
    lin = total_s * a.estimate / a.tokens
    lines = [
        f"prompt: {a.tokens:,} tokens in chunks of {a.chunk}, {a.dtype}; prefill + first token {total_s:,.1f} s "
        f"({a.tokens / total_s:,.0f} tok/s)",
        f"peak RSS {peak / MB:,.0f} MB (after load {rss_loaded / MB:,.0f} MB; "
        f"growth {(peak - rss_loaded) / MB:,.0f} MB)",
        f"decode state SeqState.nbytes() {end_state['nbytes'] / MB:,.2f} MB at pos {end_state['pos']:,}; "
        f"planned {planned / MB:,.2f} MB ({source})",
        f"entries per layer (compressed, indexer keys): {end_state['entries']}",
        f"chunk time fit: {fa:.3f} s + {fb * 1e6:.3f} us x position (chunk of {a.chunk})",
    ]
    quarter = a.tokens // 4
    if quarter >= a.chunk and quarter % a.chunk == 0:  # the same prefill passes N/4 on its way to N
        t_quarter = sum(sec for start, sec in marks if start < quarter)
        t_all = sum(sec for _, sec in marks)
        lines.append(f"prefill time {quarter:,} -> {a.tokens:,} tokens (4x): {t_quarter:,.1f} s -> {t_all:,.1f} s, "
                     f"**{t_all / t_quarter:.2f}x** (linear: 4x)")
    if est is not None:
        lines.append(f"estimated prefill of {a.estimate:,} tokens: ~{est:,.0f} s ({est / 60:,.0f} min) from that fit; "
                     f"a linear extrapolation would say {lin:,.0f} s")
    print("\n".join(lines))
    if not a.no_write:
        sys.path.insert(0, str(HERE))
        from engine_speed import write_section  # one section writer for every bench script

        head = (f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
                f"{platform.python_version()}, 1-min load average at the end {os.getloadavg()[0]:.1f}. Command: "
                f"`python bench/{Path(__file__).name} --tokens {a.tokens} --chunk {a.chunk} --dtype {a.dtype}`")
        text = "\n".join([SECTION, "", head, "", *(f"- {ln}" for ln in lines)]) + "\n"
        write_section(HERE / "RESULTS.md", SECTION, text)


if __name__ == "__main__":
    main()
