"""CPU prefill/decode speed of our engine against llama.cpp (llama-cpp-python's `Llama`) on the same weights.

    python bench/cpu_speed.py [--quick] [--contexts 512,2048,8192,32768] [--only small|deep|wide] [--repeat N]
                              [--json FILE] [--write] [--max-seconds 3600] [--wide-llama]

Model sets (random weights in the official layout; llama.cpp gets the q8_0 GGUF its own converter makes):
  small: serve_peers.bench_args(), 4 layers at hidden 256, at every context.
  deep:  V4-Flash's 43-layer SWA/CSA/HCA schedule at the same widths, at 512 and 8K.
  wide:  V4-Flash's real widths (hidden 4096, 64 x 512 heads, experts of 2048 in FP4), one CSA and one HCA
         layer, 8 experts top-6, at 512: decode bytes per token x tok/s against the streaming ceiling (the best of
         a BF16 GEMV and a plain read of 1 GiB).
Each measurement is a fresh subprocess, run one after the other with 2 threads, so peak RSS (VmHWM) is
that side's alone; a failed or timed-out side is reported in the table. --quick: 512 only, 16 decode tokens.
--write puts the table into bench/RESULTS.md as "## CPU speed (bench/cpu_speed.py)".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import serve_peers
from engine_speed import write_section
from serve_peers import OUT, THREADS

HERE = Path(__file__).resolve().parent
SECTION = "## CPU speed (bench/cpu_speed.py)"
MB, GB = 1 << 20, 1e9
# V4-Flash, architecture.md §1.1: compress_ratios = [0,0] + [4,128]x20 + [4] + [0] (43 layers + the MTP
# entry), num_hash_layers = 3.
FLASH_RATIOS = [0, 0] + [4, 128] * 20 + [4] + [0]
FLASH_HASH = 3
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
RESULT = "@@cpu_speed "  # marks the child's result line among whatever the libraries print


# ---------------------------------------------------------------------------------------------------------
# the models


def deep_args() -> Any:
    from v4cli.runtime.tiny import tiny_args

    assert len(FLASH_RATIOS) == 44
    small = serve_peers.bench_args().to_dict()
    return tiny_args("flash", **{**small, "compress_ratios": FLASH_RATIOS, "num_hidden_layers": 43,
                                 "num_hash_layers": FLASH_HASH})


def wide_args(real_vocab: bool = False) -> Any:
    from v4cli.runtime.tiny import tiny_args

    # A small vocabulary: with two layers a real (129,280 x 4096) head would dominate the bytes read. llama.cpp's
    # converter needs the tokenizer's (real) vocabulary, so --wide-llama writes a second, real-vocab copy.
    return tiny_args("flash", vocab_size=129280 if real_vocab else 1024, hidden_size=4096,
                     num_attention_heads=64, head_dim=512, qk_rope_head_dim=64, q_lora_rank=1024, o_groups=8,
                     o_lora_rank=1024, moe_intermediate_size=2048, n_routed_experts=8, num_experts_per_tok=6,
                     index_n_heads=64, index_head_dim=128, index_topk=512, sliding_window=128,
                     num_hidden_layers=2, compress_ratios=[4, 128, 0], num_hash_layers=0)


ARGS = {"small": serve_peers.bench_args, "deep": deep_args, "wide": wide_args,
        "wide-vocab": lambda: wide_args(real_vocab=True)}


def ensure_ckpt(name: str, args: Any) -> Path:
    """Written once under bench/out/, named by the config's hash (as serve_peers.ensure_checkpoint)."""
    import hashlib
    import shutil

    from v4cli.runtime.tiny import root_config, write_checkpoint

    tag = hashlib.sha256(json.dumps(root_config(args), sort_keys=True).encode()).hexdigest()[:8]
    path = OUT / f"cpu-{name}-{tag}"
    if not (path / "config.json").exists():
        print(f"writing the {name} checkpoint to {path} ...", flush=True)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, args, seed=0)
        tmp.rename(path)  # a half-written folder never carries the real name
    return path


def gguf_for(ckpt: Path) -> tuple[Path | None, str]:
    """(the GGUF, "") or (None, why not): llama.cpp's converter may refuse a config."""
    version = serve_peers.llama_cpp_version()
    if version is None:
        return None, "llama-cpp-python is not installed"
    try:
        return serve_peers.ensure_gguf(ckpt, serve_peers.ensure_converter(version, None), version), ""
    except SystemExit as e:  # ensure_gguf's way of saying the converter failed
        keep = OUT / f"{ckpt.name}-convert.log"  # the shared log is overwritten by the next conversion
        keep.write_text((OUT / "convert_hf_to_gguf.log").read_text())
        last = [ln for ln in keep.read_text().splitlines() if ln.strip()][-1:] or [""]
        return None, f"converter failed: {e}; last line: {last[0][:160]} (log bench/out/{keep.name})"
    except Exception as e:  # fetching the sdist, a missing converter file
        return None, f"no GGUF: {type(e).__name__}: {e}"


def decode_bytes(ckpt: Path, args: Any) -> int:
    """Weight bytes one decode step reads, from the shard headers: all but the embedding (one row), the MTP
    block (unread without speculation) and tid2eid (one row); routed experts count k/E of their bytes."""
    share = args.num_experts_per_tok / args.n_routed_experts
    total = 0.0
    for shard in sorted(ckpt.glob("*.safetensors")):
        with open(shard, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, meta in header.items():
            if name == "__metadata__" or name == "embed.weight" or name.startswith("mtp.") \
                    or name.endswith("tid2eid"):
                continue
            n = meta["data_offsets"][1] - meta["data_offsets"][0]
            total += n * share if ".ffn.experts." in name else n
    return int(total)


# ---------------------------------------------------------------------------------------------------------
# the children: one measurement each, in a fresh interpreter


def peak_rss() -> int:
    """VmHWM, this process's own peak: ru_maxrss survives exec, so a child would start from its parent's peak
    (measured: llama.cpp's child "peaked" at the 795 MB of a parent that had just written the deep model)."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def prompt(seed: int, n: int, vocab: int) -> list[int]:
    import numpy as np  # both sides have numpy; torch would add to llama.cpp's RSS

    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


def child_ours(job: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from v4cli.runtime import Engine, SamplingParams

    torch.set_num_threads(job.get("threads", THREADS))
    ctx, n = job["ctx"], job["decode"]
    dtype = inspect.signature(Engine.from_pretrained).parameters.get("dtype")  # what we leave to its default
    default = dtype.default if dtype is not None else "?"
    eng = Engine.from_pretrained(job["model"], max_context=ctx + n + 64, max_batch=1)
    rss_loaded = peak_rss()
    # Warm-up on another prompt (both sides): first-call costs (allocator, oneDNN, lazy init) are not speed.
    for _ in eng.stream(prompt(job["seed"] + 2, min(ctx, 512), job["vocab"]), SamplingParams(
            temperature=0.0, ignore_eos=True, max_tokens=3)):
        pass
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n + 1)
    t0 = time.perf_counter()
    times = [time.perf_counter() for ev in eng.stream(prompt(job["seed"], ctx, job["vocab"]), params)
             if ev.token_id >= 0]
    peak = peak_rss()

    class Ops(TorchDispatchMode):  # counts each ATen op dispatched from Python (a kernel's inner ops: no)
        seen: Counter[str] = Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.seen[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    # Another fresh prompt (no prefix reuse); its first decode step is a warm-up, the next ones are counted.
    steps = job["op_steps"]
    it = eng.stream(prompt(job["seed"] + 1, 64, job["vocab"]), SamplingParams(temperature=0.0, ignore_eos=True,
                                                                              max_tokens=steps + 3))
    next(it), next(it)
    with Ops() as ops:
        for _ in range(steps):
            next(it)
    for _ in it:
        pass
    return dict(prefill_s=times[0] - t0, decode_s=times[-1] - times[0], decoded=len(times) - 1, peak_rss=peak,
                rss_loaded=rss_loaded, ops_step_layer=sum(ops.seen.values()) / steps / eng.args.n_layers,
                top_ops=ops.seen.most_common(8), dtype=str(default).removeprefix("torch."),
                model_dtype=str(eng.model.norm.weight.dtype).removeprefix("torch."), kernels=eng.kernels,
                load=os.getloadavg()[0])


def child_llama(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from llama_cpp import Llama

    ctx, n = job["ctx"], job["decode"]
    if not job.get("extra_bufts", True):  # llama.cpp's --no-extra-bufts: no weight repacking (the AMX buffers)
        import llama_cpp

        defaults = llama_cpp.llama_model_default_params

        def no_repack() -> Any:
            p = defaults()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_model_default_params = no_repack
        llama_cpp.llama.llama_cpp.llama_model_default_params = no_repack
    llm = Llama(model_path=job["model"], n_ctx=ctx + n + 64, n_threads=THREADS, n_threads_batch=THREADS,
                n_batch=512, verbose=False)
    rss_loaded = peak_rss()
    vocab = llm.n_vocab()

    def greedy() -> int:  # the last token's logits: with logits_all off only it has a row
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))))

    llm.eval(prompt(job["seed"] + 2, min(ctx, 512), job["vocab"]))  # warm-up, as ours
    llm.eval([greedy()])
    llm.reset()  # the next eval starts at position 0 and drops this KV
    t0 = time.perf_counter()
    llm.eval(prompt(job["seed"], ctx, job["vocab"]))
    tok = greedy()
    t1 = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        tok = greedy()
    t2 = time.perf_counter()
    return dict(prefill_s=t1 - t0, decode_s=t2 - t1, decoded=n, peak_rss=peak_rss(), rss_loaded=rss_loaded,
                load=os.getloadavg()[0])


def child_ceiling(job: dict[str, Any]) -> dict[str, Any]:
    """Streaming ceiling over ~1 GiB of weights, best of several runs of each: torch's BF16 GEMV, and a plain read
    (a float32 sum over the same bytes: vectorized, on every thread; torch's GEMV can stream well below it)."""
    import torch

    torch.set_num_threads(job.get("threads", THREADS))
    k = 4096
    w = torch.randn((1 << 30) // (2 * k), k, dtype=torch.bfloat16)
    x = torch.randn(k, dtype=torch.bfloat16)
    best: dict[str, float] = {}
    flat = w.view(torch.float32)
    for name, f in (("torch.mv", lambda: torch.mv(w, x)), ("x @ W.t()", lambda: x[None] @ w.t()),
                    ("read (f32 sum)", lambda: flat.sum())):
        f()  # warm-up: first touch, oneDNN's kernel choice
        for _ in range(job["reps"]):
            t = time.perf_counter()
            f()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    gbps = {name: w.nbytes / s / GB for name, s in best.items()}
    return dict(gbps=max(gbps.values()), by_method=gbps, nbytes=w.nbytes)


def child_build(job: dict[str, Any]) -> dict[str, Any]:
    """Writes a checkpoint in a child: the parent would keep the peak of generating the weights (GBs for wide)."""
    name = job["set"]
    path = serve_peers.ensure_checkpoint() if name == "small" else ensure_ckpt(name, ARGS[name]())
    return dict(path=str(path))


def run_child(job: dict[str, Any], timeout: float, omp_wait: str) -> dict[str, Any]:
    """One measurement in a fresh interpreter; {"error": ...} when it fails or runs past `timeout`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    env = {**os.environ, **serve_peers.thread_env(omp_wait)}
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [f"rc {proc.returncode}"]
        return {"error": f"rc {proc.returncode}: {tail[0][:200]}"}
    res = json.loads(lines[-1][len(RESULT):])
    res["wall_s"] = time.perf_counter() - t
    return res


# ---------------------------------------------------------------------------------------------------------
# the table


def fmt_ctx(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 else str(n)


def rate(r: dict[str, Any] | None, key: str, ctx: int) -> float | None:
    if not r or "error" in r:
        return None
    if key == "prefill":
        return ctx / r["prefill_s"] if r["prefill_s"] > 0 else None
    return r["decoded"] / r["decode_s"] if r["decode_s"] > 0 else None


def cell(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(o: float | None, p: float | None) -> str:
    return f"**{o / p:.2f}**" if o and p else "-"


def machine() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1] for ln in info if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1] for ln in info if ln.startswith("flags")), "").split())
    import torch

    from v4cli.runtime import kernels

    return dict(cpu=re.sub(r"\s+", " ", model).strip(), cpus=os.cpu_count(),
                flags={f: f in flags for f in FLAGS}, torch=torch.__version__,
                llama_cpp_python=serve_peers.llama_cpp_version(), kernels=kernels.install(),
                python=platform.python_version())


def render(a: argparse.Namespace, mach: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> str:
    ours_any = next((r["ours"] for r in rows if "error" not in r["ours"]), {})  # dtype: the same in every child
    flags = " ".join(f if on else f"no-{f}" for f, on in mach["flags"].items())
    command = f"python bench/cpu_speed.py{''.join(' ' + s for s in a.argv)}"
    lines = [SECTION, "",
             f"{datetime.date.today()}, {mach['cpu']}, {mach['cpus']} CPUs ({flags}); torch {mach['torch']}, "
             f"llama-cpp-python {mach['llama_cpp_python']}, Python {mach['python']}. Kernels: {mach['kernels']}. "
             f"Command: `{command}`", ""]
    lines += [f"Ours: `Engine.from_pretrained(path)` with its default dtype ({ours_any.get('dtype', '?')}; norm "
              f"weights in {ours_any.get('model_dtype', '?')}), max_batch 1; llama.cpp: `Llama(q8_0 GGUF, "
              f"n_batch=512)`, `eval` of the prompt then {a.decode} greedy `eval([tok])` steps. {THREADS} threads "
              f"each, OMP_WAIT_POLICY={a.omp_wait}, one side at a time, each a fresh process warmed up on another "
              f"prompt (peak RSS = VmHWM, weights included). Random-token prompt of `context` tokens, a fresh "
              f"one per run (no prefix reuse); prefill tok/s = prompt tokens / time to the first token, decode "
              f"tok/s = the {a.decode} tokens after the first. Ops = ATen ops dispatched per decode step / main "
              f"layers (TorchDispatchMode over {a.op_steps} steps; a C++ kernel counts as one).", "",
              "| set | context | ours prefill tok/s | llama.cpp prefill tok/s | ours / llama.cpp | "
              "ours decode tok/s | llama.cpp decode tok/s | ours / llama.cpp | ours peak RSS | llama.cpp peak RSS | "
              "ours ops/step/layer |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, p, ctx = r["ours"], r["llama"], r["ctx"]
        rss = lambda x: f"{x['peak_rss'] / MB:,.0f} MB" if x and "error" not in x else "-"  # noqa: E731
        ops = cell(o.get("ops_step_layer"), 0) if "error" not in o else "-"
        po, pp = rate(o, "prefill", ctx), rate(p, "prefill", ctx)
        do, dp = rate(o, "decode", ctx), rate(p, "decode", ctx)
        lines.append(f"| {r['set']} ({r['layers']} layers) | {fmt_ctx(ctx)} | {cell(po, 0)} | {cell(pp, 0)} | "
                     f"{ratio(po, pp)} | {cell(do)} | {cell(dp)} | {ratio(do, dp)} | {rss(o)} | {rss(p)} | {ops} |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    lines += [f"- failed: {r['set']} {fmt_ctx(r['ctx'])} {who}: {r[side]['error']}" for r in rows
              for side, who in (("ours", "ours"), ("llama", "llama.cpp")) if "error" in r[side]]
    ran = sorted({r["ours"]["kernels"] for r in rows if "kernels" in r["ours"]} - {mach["kernels"]})
    lines += [f"- a child of ours ran other kernels (the sources changed during the run?): {k}" for k in ran]
    loads = [r[s]["load"] for r in rows for s in ("ours", "llama") if r[s] and "load" in r[s]]
    if loads:
        lines.append(f"- 1-min load average at the end of each run: {min(loads):.1f} to {max(loads):.1f} "
                     f"({mach['cpus']} CPUs; above {THREADS} means other processes competed)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------


def measure_pair(a: argparse.Namespace, name: str, ctx: int, job: dict[str, Any], gguf: Path | None,
                 extra_bufts: bool, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """One run of each side, ours first: (ours, llama.cpp's or {}, whether llama.cpp keeps its extra buffers)."""
    ours = run_child({**job, "side": "ours"}, a.max_seconds, a.omp_wait)
    print(name, fmt_ctx(ctx), "ours", ours, flush=True)
    llama: dict[str, Any] = {}
    if gguf is not None:
        lj = {**job, "side": "llama", "model": str(gguf), "extra_bufts": extra_bufts}
        llama = run_child(lj, a.max_seconds, a.omp_wait)
        if extra_bufts and "rc -6" in llama.get("error", ""):
            # Seen on an Intel CPU with AMX (2026-12-02): llama.cpp 0.3.36's AMX weight buffers abort in the
            # backend scheduler on V4's graph (GGML_ASSERT(*cur_backend_id != -1)). Its plain CPU backend runs
            # the same GGUF: measure that, and say so.
            extra_bufts = False
            notes.append("llama.cpp aborted with its AMX weight buffers (GGML_ASSERT(*cur_backend_id != -1) in "
                         "ggml-backend.cpp); it ran without them (use_extra_bufts=False, its --no-extra-bufts), "
                         "on its AVX-512 CPU backend")
            llama = run_child({**lj, "extra_bufts": False}, a.max_seconds, a.omp_wait)
        print(name, fmt_ctx(ctx), "llama.cpp", llama, flush=True)
    return ours, llama, extra_bufts


def median_run(runs: list[dict[str, Any]], ctx: int) -> dict[str, Any]:
    """The run with the median decode rate (the lower middle one of an even count); a failed one if all failed."""
    ok = sorted((r for r in runs if rate(r, "decode", ctx) is not None), key=lambda r: rate(r, "decode", ctx))
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def pairs_note(row: dict[str, Any]) -> str:
    ctx = row["ctx"]
    ratios = sorted(o / p for o, p in ((rate(q["ours"], "decode", ctx), rate(q["llama"], "decode", ctx))
                                      for q in row["pairs"]) if o is not None and p is not None)
    ours = sorted(v for v in (rate(q["ours"], "decode", ctx) for q in row["pairs"]) if v is not None)
    text = f"{row['set']} {fmt_ctx(ctx)}: {len(row['pairs'])} alternating runs of each side; ours decode " + \
        ", ".join(f"{v:.1f}" for v in ours) + " tok/s"
    if ratios:
        text += (f"; decode ratio of each pair {', '.join(f'{r:.2f}' for r in ratios)} (median "
                 f"**{ratios[(len(ratios) - 1) // 2]:.2f}**)")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 only, 16 decode tokens: a smoke run")
    ap.add_argument("--contexts", help="small's contexts (default 512,2048,8192,32768; --quick: 512); deep "
                    "runs those of 512 and 8K it has, else the first")
    ap.add_argument("--only", choices=["small", "deep", "wide"])
    ap.add_argument("--json", type=Path, help="write every measurement here")
    ap.add_argument("--write", action="store_true", help="put the table into bench/RESULTS.md")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="timeout of one measurement (subprocess)")
    ap.add_argument("--omp-wait", choices=["passive", "active", "default"], default="passive")
    ap.add_argument("--wide-llama", action="store_true", help="also convert and run the wide set in llama.cpp")
    ap.add_argument("--repeat", type=int, default=1, metavar="N", help="run each cell's two sides N times, "
                    "alternating (on a noisy machine): the table shows each side's median-decode run, a note the "
                    "spread of the pairs' ratios")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        job = json.loads(a.child)
        fn = {"ours": child_ours, "llama": child_llama, "ceiling": child_ceiling, "build": child_build}[job["side"]]
        print(RESULT + json.dumps(fn(job)), flush=True)
        return
    a.argv = sys.argv[1:]
    a.decode, a.op_steps = (16, 2) if a.quick else (64, 4)
    contexts = [int(c) for c in (a.contexts or ("512" if a.quick else "512,2048,8192,32768")).split(",")]
    deep_ctx = [c for c in contexts if c in (512, 8192)] or contexts[:1]
    sets = [("small", contexts), ("deep", deep_ctx), ("wide", [512])]  # --wide-llama: wide-vocab for wide
    mach = machine()  # builds the kernels once, here, so no child's timing pays for a build
    print(json.dumps(mach), flush=True)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    extra_bufts = True  # llama.cpp's default; turned off (and said) if it aborts with them
    for name, ctxs in sets:
        if a.only and a.only != name:
            continue
        name = "wide-vocab" if name == "wide" and a.wide_llama else name
        args = ARGS[name]()
        print(f"{name}: the checkpoint (written once under bench/out/) ...", flush=True)
        built = run_child({"side": "build", "set": name}, max(a.max_seconds, 7200), a.omp_wait)
        if "error" in built:
            notes.append(f"{name}: writing the checkpoint failed: {built['error']}")
            continue
        ckpt = Path(built["path"])
        gguf, why = (None, "not run (optional; --wide-llama)") if name == "wide" else gguf_for(ckpt)
        if gguf is None:
            notes.append(f"{name}: llama.cpp {why}")
        for i, ctx in enumerate(ctxs):
            job = dict(model=str(ckpt), ctx=ctx, decode=a.decode, op_steps=a.op_steps, vocab=args.vocab_size,
                       seed=zlib.crc32(f"{name}:{ctx}".encode()))  # one prompt per (set, context), the same for both
            row: dict[str, Any] = dict(set=name, ctx=ctx, layers=args.n_layers, llama={}, pairs=[])
            for _ in range(max(1, a.repeat)):  # alternating, so a slow minute of the machine hits both sides
                ours, llama, extra_bufts = measure_pair(a, name, ctx, job, gguf, extra_bufts, notes)
                row["pairs"].append(dict(ours=ours, llama=llama))
            row["ours"] = median_run([p["ours"] for p in row["pairs"]], ctx)
            row["llama"] = median_run([p["llama"] for p in row["pairs"]], ctx)
            if len(row["pairs"]) > 1:
                notes.append(pairs_note(row))
            if name.startswith("wide") and i == 0:
                row["bytes"] = decode_bytes(ckpt, args)
                row["share"] = f"{args.num_experts_per_tok}/{args.n_routed_experts}"
                row["ceiling"] = run_child({"side": "ceiling", "reps": 3 if a.quick else 8}, a.max_seconds,
                                           a.omp_wait)
                notes.append(wide_note(row, ctx))
                if THREADS > 1:  # how the kernels scale: the same decode and ceiling on one thread
                    row["one_thread"] = run_child({**job, "side": "ours", "threads": 1}, a.max_seconds, a.omp_wait)
                    row["ceiling_one"] = run_child({"side": "ceiling", "reps": 3 if a.quick else 8,
                                                    "threads": 1}, a.max_seconds, a.omp_wait)
                    notes.append(threads_note(row, ctx))
            rows.append(row)
    text = render(a, mach, rows, notes)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(dict(machine=mach, rows=rows, notes=notes), indent=2) + "\n")
    if a.write:
        write_section(HERE / "RESULTS.md", SECTION, text)


def wide_note(row: dict[str, Any], ctx: int) -> str:
    tok = rate(row["ours"], "decode", ctx)
    ceil = row["ceiling"].get("gbps")
    head = (f"{row['set']} decode at {fmt_ctx(ctx)}: {row['bytes'] / MB:,.0f} MiB of weights per token (shard "
            f"headers: all but the embedding and MTP, routed experts at {row['share']})")
    if tok is None or ceil is None:
        return head + f"; not measured ({row['ours'].get('error') or row['ceiling'].get('error')})"
    gbps = row["bytes"] * tok / GB
    methods = ", ".join(f"{k} {v:.1f}" for k, v in row["ceiling"]["by_method"].items())
    return (head + f" x {tok:.2f} tok/s = **{gbps:.1f} GB/s**, **{100 * gbps / ceil:.0f}%** of the streaming "
            f"ceiling {ceil:.1f} GB/s (over {row['ceiling']['nbytes'] / (1 << 30):.0f} GiB, best of "
            f"{methods} GB/s, {THREADS} threads)")


def threads_note(row: dict[str, Any], ctx: int) -> str:
    one, two = rate(row["one_thread"], "decode", ctx), rate(row["ours"], "decode", ctx)
    c1, c2 = row["ceiling_one"].get("gbps"), row["ceiling"].get("gbps")
    if None in (one, two, c1, c2):
        return f"{row['set']} threads: not measured ({row['one_thread'].get('error')})"
    return (f"{row['set']} decode from 1 to {THREADS} threads: {one:.2f} -> {two:.2f} tok/s (**{two / one:.2f}x**); "
            f"the streaming ceiling {c1:.1f} -> {c2:.1f} GB/s ({c2 / c1:.2f}x)")


if __name__ == "__main__":
    main()
