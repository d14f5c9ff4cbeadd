"""Prefill and decode speed of the built-in tiny model at growing contexts: our Engine against transformers'
DeepseekV4ForCausalLM on the same weights, side by side.

Each (engine, context) pair runs in a fresh subprocess so its peak RSS (ru_maxrss) holds only that run. The
peer's attention is dense and masked (O(S * ctx) time and memory), so it stops at the first context whose
time or memory, extrapolated quadratically from the previous one, would pass the limits; the reason is printed.
Results are ratios against the peer and the growth of our prefill time with context, never asserts.

    python bench/engine_speed.py [--contexts 512,2048,8192,32768,131072] [--max-seconds 600] [--probe]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SECTION = "## Engine speed (tiny model)"
DECODE = 32
MB = 1024 * 1024
PEER_MAX_BYTES = 16 << 30


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def ensure_checkpoints() -> tuple[Path, Path]:
    """The built-in tiny model in our (official) layout and in transformers' layout, written once."""
    from v4cli.runtime.tiny import builtin_args, write_checkpoint

    paths = (OUT / "tiny-official", OUT / "tiny-hf")
    for path, layout in zip(paths, ("official", "hf"), strict=True):
        if not (path / "config.json").exists():
            tmp = path.with_name(path.name + ".partial")
            write_checkpoint(tmp, builtin_args(), seed=0, layout=layout)
            tmp.rename(path)  # a half-written folder never carries the real name
    return paths


def prompt_ids(ctx: int, vocab: int) -> Any:
    import torch

    return torch.randint(0, vocab, (ctx,), generator=torch.Generator().manual_seed(ctx))


def child_ours(ctx: int, chunk: int, dtype_name: str) -> dict[str, Any]:
    import torch

    from v4cli.runtime.engine import Engine
    from v4cli.runtime.sampler import SamplingParams

    dtype = getattr(torch, dtype_name)
    path = OUT / "tiny-official"
    eng = Engine.from_pretrained(path, dtype=dtype, max_context=ctx + DECODE + 8, max_batch=1, chunk_size=chunk)
    rss_loaded = peak_rss()
    prompt = prompt_ids(ctx, eng.args.vocab_size)
    params = SamplingParams(max_tokens=DECODE + 1, temperature=0.0, ignore_eos=True)
    times: list[float] = []
    state_bytes = 0
    t0 = time.perf_counter()
    for _ev in eng.stream(prompt, params):
        times.append(time.perf_counter())
        # The request's state is freed with its last event; read it while the request is live (bench only).
        for req, _live in eng._live.values():
            if req.state is not None:
                state_bytes = req.state.nbytes()
    prefill_s = times[0] - t0  # the step that ends the prefill also yields the first token
    decode_s = times[-1] - times[0]
    try:
        from v4cli.runtime.plan import state_bytes as planned_bytes

        planned: int | None = planned_bytes(eng.args, ctx + DECODE, "ours", dtype.itemsize)
    except ImportError:  # the plan module is another engineer's; absent means "n/a"
        planned = None
    return dict(prefill_s=prefill_s, decode_s=decode_s, decoded=len(times) - 1, peak_rss=peak_rss(),
                rss_loaded=rss_loaded, state_bytes=state_bytes, planned_bytes=planned, load=os.getloadavg()[0],
                kernels=eng.kernels)


def child_peer(ctx: int) -> dict[str, Any]:
    import torch
    from transformers import DeepseekV4ForCausalLM

    model = DeepseekV4ForCausalLM.from_pretrained(OUT / "tiny-hf", dtype=torch.float32).eval()
    rss_loaded = peak_rss()
    ids = prompt_ids(ctx, model.config.vocab_size).unsqueeze(0)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(DECODE):
            out = model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    return dict(prefill_s=t1 - t0, decode_s=t2 - t1, decoded=DECODE, peak_rss=peak_rss(), rss_loaded=rss_loaded,
                load=os.getloadavg()[0])  # other engineers' test runs share these 2 cores


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter; {"error": ...} when it fails or runs past `timeout`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tok_s(n: int, s: float) -> float:
    return n / s if s > 0 else float("nan")


def fmt_ctx(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)


def probe(ctx: int, timeout: float) -> tuple[int, str]:
    """Prefill tok/s of our engine for chunk 512/2048 x float32/bfloat16 at `ctx`; returns the fastest."""
    best, rows = (0.0, 512, "float32"), []
    for dtype in ("float32", "bfloat16"):
        for chunk in (512, 2048):
            r = run_child(["ours", str(ctx), str(chunk), dtype], timeout)
            rate = tok_s(ctx, r["prefill_s"]) if "error" not in r else 0.0
            rows.append(f"| {dtype} | {chunk} | {rate:,.0f} | {r.get('peak_rss', 0) / MB:,.0f} MB |")
            print(rows[-1], flush=True)
            best = max(best, (rate, chunk, dtype))
    print(f"fastest at {fmt_ctx(ctx)}: chunk {best[1]}, {best[2]}")
    return best[1], best[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="512,2048,8192,32768,131072")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="timeout of one measurement (subprocess)")
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--probe", type=int, default=0, help="first compare chunk 512/2048 x fp32/bf16 at this context")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, ctx = a.child[0], int(a.child[1])
        res = child_ours(ctx, int(a.child[2]), a.child[3]) if kind == "ours" else child_peer(ctx)
        print(json.dumps(res))
        return

    ensure_checkpoints()
    probe_note = ""
    if a.probe:
        a.chunk, a.dtype = probe(a.probe, a.max_seconds)
        probe_note = f" (fastest of chunk 512/2048 x float32/bfloat16 at {fmt_ctx(a.probe)})"
    contexts = [int(c) for c in a.contexts.split(",")]
    ours: dict[int, dict[str, Any]] = {}
    peer: dict[int, dict[str, Any]] = {}
    peer_stop = ""
    for ctx in contexts:
        ours[ctx] = run_child(["ours", str(ctx), str(a.chunk), a.dtype], a.max_seconds)
        print(fmt_ctx(ctx), "ours", ours[ctx], flush=True)
        if peer_stop:
            continue
        done = [c for c in peer if "error" not in peer[c]]
        if done:  # dense attention: time and the [S, ctx] score tensors grow with the square of the context
            prev = peer[done[-1]]
            grow = (ctx / done[-1]) ** 2
            est_s = prev["prefill_s"] * grow
            est_b = prev["rss_loaded"] + (prev["peak_rss"] - prev["rss_loaded"]) * grow
            if est_s > a.max_seconds or est_b > PEER_MAX_BYTES:
                peer_stop = (f"peer stopped at {fmt_ctx(ctx)}: extrapolated from {fmt_ctx(done[-1])} it needs "
                             f"~{est_s:,.0f} s and ~{est_b / (1 << 30):,.1f} GiB (limits {a.max_seconds:.0f} s, "
                             f"{PEER_MAX_BYTES >> 30} GiB)")
                print(peer_stop, flush=True)
                continue
        peer[ctx] = run_child(["peer", str(ctx)], a.max_seconds)
        print(fmt_ctx(ctx), "peer", peer[ctx], flush=True)
        if "error" in peer[ctx]:
            peer_stop = f"peer failed at {fmt_ctx(ctx)}: {peer[ctx]['error']}"

    def cell(r: dict[str, Any] | None, key: str) -> str:
        if not r or "error" in r:
            return "-"
        if key == "prefill":
            return f"{tok_s(r['_ctx'], r['prefill_s']):,.0f}"
        return f"{tok_s(r['decoded'], r['decode_s']):,.1f}"

    def ratio(o: dict[str, Any] | None, p: dict[str, Any] | None, key: str) -> str:
        if not o or not p or "error" in o or "error" in p:
            return "-"
        return f"**{float(cell(o, key).replace(',', '')) / float(cell(p, key).replace(',', '')):.2f}**"

    lines = ["| context | ours prefill tok/s | peer prefill tok/s | ours / peer | ours decode tok/s | "
             "peer decode tok/s | ours / peer | ours peak RSS | peer peak RSS | state bytes (planned) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ctx in contexts:
        o, p = ours.get(ctx), peer.get(ctx)
        for r in (o, p):
            if r:
                r["_ctx"] = ctx
        o_ok = o is not None and "error" not in o
        rss = lambda r: f"{r['peak_rss'] / MB:,.0f} MB" if r and "error" not in r else "-"  # noqa: E731
        state = (f"{o['state_bytes'] / MB:,.2f} MB ({o['planned_bytes'] / MB:,.2f})" if o_ok and o["planned_bytes"]
                 else (f"{o['state_bytes'] / MB:,.2f} MB (n/a)" if o_ok else f"- ({o.get('error') if o else ''})"))
        lines.append(f"| {fmt_ctx(ctx)} | {cell(o, 'prefill')} | {cell(p, 'prefill')} | {ratio(o, p, 'prefill')} | "
                     f"{cell(o, 'decode')} | {cell(p, 'decode')} | {ratio(o, p, 'decode')} | {rss(o)} | {rss(p)} | "
                     f"{state} |")
    growth = []
    for lo, hi in ((8192, 32768), (32768, 131072)):
        if all(c in ours and "error" not in ours[c] for c in (lo, hi)):
            g = ours[hi]["prefill_s"] / ours[lo]["prefill_s"]
            growth.append(f"prefill time {fmt_ctx(lo)} -> {fmt_ctx(hi)} (4x the tokens): **{g:.2f}x** "
                          f"({ours[lo]['prefill_s']:.1f} s -> {ours[hi]['prefill_s']:.1f} s; linear would be 4x, "
                          f"the bound is 5x)")
    cpu = re.sub(r"\s+", " ", next((ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                    if ln.startswith("model name")), platform.machine())).strip()
    head = (f"{datetime.date.today()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
            f"Command: `python bench/{Path(__file__).name} --contexts {a.contexts}"
            f"{f' --probe {a.probe}' if a.probe else ''}`")
    body = [SECTION, "", head, "",
            f"Ours: `Engine.from_pretrained(dtype={a.dtype}, chunk_size={a.chunk}, simulate_quant=True)`{probe_note}; "
            f"peer: transformers `DeepseekV4ForCausalLM` float32 on the same weights (one forward over the prompt "
            f"with `use_cache=True`, then {DECODE} greedy steps on its cache). Random-token prompt; decode = "
            f"{DECODE} greedy tokens with ignore_eos. Each cell is a fresh process; peak RSS = ru_maxrss, weights "
            f"included. State bytes = `SeqState.nbytes()` after prefill + decode, planned = "
            f"`plan.state_bytes(args, ctx + {DECODE}, 'ours')`. Shared 2-core machine: times are noisy.", "",
            *lines, "", *(f"- {g}" for g in growth)]
    ran = sorted({r["kernels"] for r in ours.values() if "kernels" in r})
    if ran:
        body.append(f"- our ops: {'; '.join(ran)} (`V4_KERNELS=0` for the PyTorch twins alone)")
    if peer_stop:
        body.append(f"- {peer_stop}")
    errors = [f"{fmt_ctx(c)} {k}: {r['error']}" for k, d in (("ours", ours), ("peer", peer))
              for c, r in d.items() if "error" in r]
    body.extend(f"- failed: {e}" for e in errors)
    loads = [r["load"] for d in (ours, peer) for r in d.values() if "load" in r]
    if loads:
        body.append(f"- 1-min load average at the end of each run: {min(loads):.1f} to {max(loads):.1f} "
                    f"(2 cores; above 2 means other processes competed)")
    text = "\n".join(body) + "\n"
    print(text)
    if not a.no_write:
        write_section(HERE / "RESULTS.md", SECTION, text)


def write_section(path: Path, section: str, text: str) -> None:
    """Replace `section` (up to the next "## ") in RESULTS.md, or append it; other sections stay as they are."""
    old = path.read_text() if path.exists() else "# v4 benchmark results\n"
    pat = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda _m: text + "\n", old) if pat.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
