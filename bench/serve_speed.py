"""Serving speed: `v4 serve` against llama.cpp's own server (llama-cpp-python[server]) on the same weights,
side by side, one server at a time, each with 2 threads, on loopback only.

The model is a small official-layout DeepSeek-V4 checkpoint with the real head geometry (head_dim 512, rope
64, indexer head 128: llama.cpp needs it), written by `v4cli.runtime.tiny`; the peer loads a GGUF that
llama.cpp's own converter (`convert_hf_to_gguf.py --outtype q8_0`, from the llama-cpp-python sdist of the
installed version) makes from the same files: FP8 -> Q8_0, FP4 experts -> MXFP4, BF16 stays BF16. Both are
cached under bench/out/ (gitignored).

Measured per server, over its OpenAI Chat Completions endpoint with SSE streaming, temperature 0:
  - 1, 4 and 16 concurrent streams (closed loop: that many requests in flight) of distinct random-word
    prompts of ~256 tokens, 32 completion tokens each: aggregate decode tok/s = completion tokens after the
    first / the time at least one stream was decoding (union of the [first token, last token] intervals);
    end-to-end tok/s = completion tokens / wall time; p50/p99 time to first token (queueing included);
  - the time to first token of an ~8K-token prompt sent cold, then repeated exactly (the prefix cache should
    answer it), then with the same 8K document and a new question; the cache hits each server claims;
  - the grammar's per-token overhead: decode ms/token with `response_format: json_object` against without;
    and `bench/grammar_overhead.py`, where it exists, is run after this script's own measurements.
Results are ratios against the peer run here, never absolute-time asserts.

    .venv/bin/python bench/serve_speed.py [--quick] [--only ours|llama] [--no-write]

--quick: 2/4/16 requests at 1/4/16 streams, the 8K prompt cold and repeated only; about 5 minutes on a quiet
machine once the files are cached (llama.cpp prefills 8K at ~100 tok/s here: each 8K request costs it over a
minute). The full run takes 10-12 minutes. RESULTS.md is updated only when both sides ran.

Needs: `pip install 'llama-cpp-python[server]==0.3.36' httpx psutil transformers` (transformers: the
converter reads the tokenizer with it). llama-cpp-python builds llama.cpp from its sdist (cmake and a C++
compiler; ~13 minutes on 2 cores): `CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF" MAKEFLAGS=-j2 pip install
...`. The converter (convert_hf_to_gguf.py, conversion/, its own gguf-py) is fetched once into bench/out/ with
`pip download --no-binary :all: --no-deps llama-cpp-python==<installed>`; no `gguf` or `sentencepiece` needed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ is not a package: these resolve because this script's folder is first on sys.path
from engine_speed import write_section
from serve_client import MAX_TOKENS, PROMPT_TOKENS, Prompts, run_side
from serve_peers import (
    CONTEXT,
    HERE,
    LLAMA_CPP_PYTHON,
    LONG_TOKENS,
    OUT,
    THREADS,
    bench_args,
    ensure_checkpoint,
    ensure_converter,
    ensure_gguf,
    llama_cpp_version,
    llama_server,
    ours_server,
    stop_servers_on_exit,
    v4_executable,
    v4_serve_available,
)

SECTION = "## Serving speed (v4 serve vs llama.cpp's server)"
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve")


def cpu_line() -> tuple[str, str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("model name")), platform.machine())
    flags_line = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    have = set(flags_line.split())
    return re.sub(r"\s+", " ", model).strip(), " ".join(f for f in SIMD_FLAGS if f in have) or "n/a"


def llama_system_info() -> str:
    try:
        proc = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info()"
                               ".decode())"], capture_output=True, text=True, timeout=60)
        return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else "n/a"
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def table(ours: dict[str, Any], peer: dict[str, Any], long_tokens: int) -> list[str]:
    rows = ["| measure | ours (v4 serve) | llama.cpp | ours / llama.cpp |", "|---|---:|---:|---:|"]

    def get(side: dict[str, Any], *keys: Any) -> float | None:
        cur: Any = side
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur if isinstance(cur, (int, float)) and cur == cur else None  # drop NaN

    def row(label: str, o: float | None, p: float | None, unit: str, digits: int) -> None:
        if o is None and p is None:
            return  # not measured on either side (e.g. a case --quick leaves out)
        cell = lambda v: "-" if v is None else f"{v:,.{digits}f}{unit}"  # noqa: E731
        ratio = f"**{o / p:.2f}**" if o is not None and p not in (None, 0) else "-"
        rows.append(f"| {label} | {cell(o)} | {cell(p)} | {ratio} |")

    def pair(label: str, keys: tuple[Any, ...], unit: str, digits: int) -> None:
        row(label, get(ours, *keys), get(peer, *keys), unit, digits)

    for conc in (1, 4, 16):
        streams = f"{conc} stream{'s' if conc > 1 else ''}"
        pair(f"{streams}: aggregate decode tok/s (higher is better)", ("levels", conc, "decode_tps"), "", 1)
        pair(f"{streams}: end-to-end tok/s", ("levels", conc, "e2e_tps"), "", 1)
        for q in ("p50", "p99"):
            pair(f"{streams}: TTFT {q} (lower is better)", ("levels", conc, f"ttft_{q}"), " s", 2)
    k = f"{long_tokens / 1024:.0f}K"
    for label in ("cold", "repeat", "new question"):
        pair(f"{k} prompt, {label}: TTFT", ("long", label, "ttft"), " s", 2)
    for label in ("repeat", "new question"):
        o, p = get(ours, "long", label, "claimed"), get(peer, "long", label, "claimed")
        if o is None and p is None:
            continue
        rows.append(f"| {k} prompt, {label}: cache hit tokens claimed | {'-' if o is None else f'{o:,}'} | "
                    f"{'-' if p is None else f'{p:,}'} | |")
    for label in ("plain", "json_object"):
        pair(f"decode ms/token, 1 stream, {label}", ("grammar", label, "ms_per_token"), " ms", 2)
    over = []
    for side in (ours, peer):
        a, b = get(side, "grammar", "plain", "ms_per_token"), get(side, "grammar", "json_object", "ms_per_token")
        over.append(None if a is None or b is None else b - a)
    row("grammar overhead per token (json_object - plain)", over[0], over[1], " ms", 2)
    if rows[-1].startswith("| grammar overhead") and not all(v is not None and v > 0 for v in over):
        rows[-1] = rows[-1].rsplit("|", 2)[0] + "| - |"  # a ratio of differences within the noise means nothing
    mb = lambda side: (get(side, "rss") or 0) / 2**20 or None  # noqa: E731
    row("server RSS, peak sampled (MB)", mb(ours), mb(peer), "", 0)
    pair("server start to ready (s)", ("start_s",), " s", 1)
    return rows


def grammar_hook(quick: bool, timeout: float) -> list[str]:
    """The other grammar benchmark (`bench/grammar_overhead.py`), where it exists: run as its own command."""
    path = HERE / "grammar_overhead.py"
    if not path.exists():
        return ["- grammar_overhead.py: not present yet; the json_object rows above are this script's own "
                "measurement through each server"]
    cmd = [sys.executable, str(path)]
    try:
        helptext = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60).stdout
        if quick and "--quick" in helptext:
            cmd.append("--quick")
        elif quick and "--tokens" in helptext:
            cmd += ["--tokens", "100"]
        if "--no-write" in helptext:
            cmd.append("--no-write")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        tail = (proc.stdout.strip().splitlines() or [f"rc {proc.returncode}: {proc.stderr.strip()[-200:]}"])[-12:]
    except subprocess.TimeoutExpired:
        tail = [f"over {timeout:.0f} s"]
    shown = " ".join(["python", f"bench/{path.name}", *cmd[2:]])
    return [f"- `{shown}` (its own measurement, in-process, no server):", "",
            "  ```", *(f"  {t}" for t in tail), "  ```"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (under ~5 minutes once built)")
    ap.add_argument("--only", choices=["ours", "llama"], help="measure one side only")
    ap.add_argument("--converter", help="a llama.cpp checkout holding convert_hf_to_gguf.py (default: from the sdist)")
    ap.add_argument("--v4", help="the v4 executable (default: the one beside this Python)")
    ap.add_argument("--v4-arg", action="append", default=[], help="extra argument for `v4 serve` (repeatable)")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="seconds a server may take to be ready")
    ap.add_argument("--level-timeout", type=float, default=300.0, help="seconds one batch of requests may take")
    ap.add_argument("--omp-wait", choices=["passive", "active", "default"], default="passive",
                    help="OMP_WAIT_POLICY for both servers (default passive: the machine is shared)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    a = ap.parse_args()
    stop_servers_on_exit()
    t_start = time.perf_counter()

    ckpt = ensure_checkpoint()
    nonce = f"{int(time.time()) % 100000:05d}"
    prompts = Prompts(ckpt, nonce)
    ours: dict[str, Any] = {"error": "not run (--only llama)"}
    peer: dict[str, Any] = {"error": "not run (--only ours)"}
    notes: list[str] = []

    if a.only != "ours":
        version = llama_cpp_version()
        if version is None:
            peer = {"error": f"llama-cpp-python is not installed: pip install 'llama-cpp-python[server]=="
                             f"{LLAMA_CPP_PYTHON}'"}
        else:
            gguf = ensure_gguf(ckpt, ensure_converter(version, a.converter), version)
            peer = run_side("llama", lambda: llama_server(gguf, a.omp_wait), prompts, a.quick, a.start_timeout,
                            a.level_timeout)
            peer["version"] = version
            notes.append(f"llama.cpp: llama-cpp-python {version} (`python -m llama_cpp.server`, {THREADS} threads, "
                         f"n_ctx {CONTEXT}, `--logits_all False`, `--interrupt_requests False`; its RAM "
                         f"cache `--cache` off, as by default: it cannot help here and holds a 265 MB copy of the "
                         f"logits per entry), GGUF `{gguf.name}` "
                         f"({gguf.stat().st_size / 2**20:,.0f} MiB) made by its own `convert_hf_to_gguf.py "
                         f"--outtype q8_0` from the same files (FP8 -> Q8_0, FP4 experts -> MXFP4, BF16 kept). "
                         f"What its server can do: one llama_context behind a lock, so concurrent requests are "
                         f"served one after another (no parallel slots or continuous batching in this package; "
                         f"those are the C++ llama-server's `-np`); no `ignore_eos`; no `usage` in streams "
                         f"(completion tokens = max_tokens when it stopped for length, else content chunks); "
                         f"cache hits only in its verbose log ('N prefix-match hit').")
    if a.only != "llama":
        exe = v4_executable(a.v4)
        why = v4_serve_available(exe)
        if why:
            ours = {"error": why}
        else:
            home = Path(tempfile.mkdtemp(prefix="v4home-", dir=OUT))
            try:
                ours = run_side("ours", lambda: ours_server(exe, ckpt, home, a.v4_arg, a.omp_wait), prompts,
                                a.quick, a.start_timeout, a.level_timeout)
            finally:
                shutil.rmtree(home, ignore_errors=True)
            if ours.get("kernels"):
                notes.append(f"ours: kernels: {ours['kernels']} (start to ready includes their build on first use "
                             f"after the C++ sources change)")
            notes.append(f"ours: `v4 serve --model {ckpt.name} --max-batch 16 --context {CONTEXT}"
                         f"{''.join(' ' + x for x in a.v4_arg)}` ({THREADS} threads via OMP_NUM_THREADS, "
                         f"a fresh V4_HOME so the disk prefix cache starts empty); completion tokens and cache "
                         f"hits from the stream's `usage` (`prompt_cache_hit_tokens`).")

    long_tokens = next((s["long_tokens"] for s in (ours, peer) if "long_tokens" in s), LONG_TOKENS)
    model, flags = cpu_line()
    cmd = f"python bench/{Path(__file__).name}{' --quick' if a.quick else ''}"
    n_req = "2/4/16" if a.quick else "8/16/32"
    head = (f"{datetime.date.today()}, {model}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
            f"CPU flags: {flags}. Command: `{cmd}`")
    args = bench_args()
    desc = (f"Model: official-layout V4 checkpoint written by `v4cli.runtime.tiny` ({args.num_hidden_layers} layers "
            f"window/CSA/HCA/CSA + MTP, hidden {args.hidden_size}, {args.num_attention_heads} heads x "
            f"{args.head_dim}, rope {args.qk_rope_head_dim}, indexer {args.index_n_heads} heads x "
            f"{args.index_head_dim}, {args.n_routed_experts} experts top-{args.num_experts_per_tok} FP4, FP8 "
            f"linears, window {args.sliding_window}, top-k {args.index_topk}, vocab {args.vocab_size:,}). "
            f"Each server alone on the machine, {THREADS} threads (OMP_WAIT_POLICY {a.omp_wait}), loopback, "
            f"`/v1/chat/completions` with SSE streaming, temperature 0, {MAX_TOKENS} completion tokens. "
            f"N streams = N requests in flight (closed loop; {n_req} requests at 1/4/16) of distinct "
            f"~{PROMPT_TOKENS}-token random-word prompts. Aggregate decode tok/s = completion tokens after each "
            f"stream's first / the time at least one stream was decoding; end-to-end = all completion tokens / "
            f"wall time; TTFT includes queueing. Long prompt: ~{long_tokens:,} tokens (document + question) sent "
            f"cold, then repeated exactly{'' if a.quick else ', then the same document with a new question'}. "
            f"Grammar: `response_format: "
            f"json_object` against none, one stream, alternating, median ms per decoded token.")
    body = [SECTION, "", head, "", desc, "", *table(ours, peer, long_tokens), ""]
    body += [f"- {n}" for n in notes]
    for name, side in (("ours", ours), ("llama.cpp", peer)):
        if "error" in side:
            body.append(f"- {name}: {side['error']}")
            continue
        for conc, s in side.get("levels", {}).items():
            if "error" in s or s.get("errors") or s.get("short"):
                body.append(f"- {name} at {conc}: {s.get('error') or ''} {s.get('errors') or ''} "
                            f"{s.get('short', 0)} request(s) stopped before {MAX_TOKENS} tokens "
                            f"(finish: {', '.join(s.get('finishes', []))})")
        for label, c in side.get("long", {}).items():
            if c.get("error"):
                body.append(f"- {name}, long prompt {label}: {c['error']}")
            elif label != "cold" and c.get("found") and not c.get("claimed"):
                body.append(f"- {name}, long prompt {label}: it found a {c['found']:,}-token matching prefix in its "
                            f"live context and re-evaluated the whole prompt anyway (its log: 'partial kv removal "
                            f"not supported': llama.cpp's DeepSeek-V4 memory cannot drop the context's tail, here "
                            f"the previous answer)")
            elif label == "new question" and c.get("claimed") == 0 and c.get("found") is None:
                body.append(f"- {name}, long prompt {label}: no cache hit for the same ~{LONG_TOKENS // 1024}K "
                            f"document with another question: it reported 0 cached tokens")
        for label, g in side.get("grammar", {}).items():
            if isinstance(g, dict) and g.get("errors"):
                body.append(f"- {name}, grammar {label}: {g['errors'][0][:240]}")
            elif isinstance(g, str):
                body.append(f"- {name}, grammar: {g}")
        gtoks = {k: v.get("tokens") for k, v in side.get("grammar", {}).items() if isinstance(v, dict)}
        body.append(f"- {name}: completion tokens per grammar request {gtoks}")
    loads = [s["load"] for s in (ours, peer) if "load" in s]
    if loads:
        body.append(f"- 1-min load average at the end of each server's run: {min(loads):.1f} to {max(loads):.1f} "
                    f"(2 cores; above 2 means other processes competed)")
    if "error" not in peer:
        body.append(f"- llama.cpp system info: {llama_system_info()}")
    body += grammar_hook(a.quick, a.level_timeout)
    body.append(f"- total run time {time.perf_counter() - t_start:,.0f} s")
    text = "\n".join(body) + "\n"
    print("\n" + text)
    both = "error" not in ours and "error" not in peer
    if a.no_write or not both:
        if not a.no_write:
            print("RESULTS.md left alone: it takes both sides' numbers (use --no-write to silence this).")
        return

    write_section(HERE / "RESULTS.md", SECTION, text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every server this script started is stopped", file=sys.stderr)
        sys.exit(130)
