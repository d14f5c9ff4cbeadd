"""Peak memory of loading a >= 1 GB synthetic DeepSeek-V4 checkpoint: `load_model` (memory-mapped shards)
against the naive peer that reads every shard with `safetensors.torch.load_file`, side by side.

Each measurement runs in a fresh subprocess so its RSS holds nothing but that load. Results are ratios
(to the size on disk, to the peer), never wall-clock asserts.

    python bench/load_memory.py [--dir DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Checkpoint loading memory"
# Most bytes are FP4 routed experts, then FP8 attention/shared experts, as in the real model; every
# Linear dim is a multiple of 128. 24 experts x 6 blocks x 3 x 2048^2 FP4 (+ scales) ~ 0.96 GB; 1.33 GB in all.
# (The FP4 quantizer runs ~0.13 us/param on 2 cores, so this takes ~4-5 min to write, once.)
OVERRIDES = dict(hidden_size=2048, moe_intermediate_size=2048, n_routed_experts=24, num_experts_per_tok=6,
                 num_attention_heads=16, head_dim=512, q_lora_rank=1024, o_groups=4, o_lora_rank=512,
                 index_n_heads=128, vocab_size=8192)
MB = 1024 * 1024


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def status_mb() -> dict[str, float]:
    """Current RSS split into anonymous (private copies) and file-backed (mapped shard pages) memory."""
    fields = dict(re.findall(r"^(Rss\w+|VmRSS):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M))
    return {k: int(v) / 1024 for k, v in fields.items()}


def child(mode: str, path: Path) -> dict[str, float]:
    """One measurement in this (fresh) process. Every mode imports the same modules so baselines match."""
    import psutil
    import safetensors.torch
    import torch

    from v4cli.runtime import load_model
    from v4cli.runtime.tiny import tiny_args, write_checkpoint

    if mode == "build":
        write_checkpoint(path, tiny_args("flash", **OVERRIDES), n_shards=4, tokenizer=False)
        return {}
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    if mode == "ours":
        model = load_model(path, dtype=torch.bfloat16)
    elif mode.startswith("peer"):
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(path.glob("*.safetensors")):
            if mode == "peer-pread":  # read every byte into process memory
                part = safetensors.torch.load_file(shard, backend="pread")
            else:  # the default (mmap) backend: tensors view a mapping of the file, nothing is read yet
                part = safetensors.torch.load_file(shard)
            if mode == "peer-copy":  # what load_state_dict into allocated parameters costs: one copy each
                part = {k: v.clone() for k, v in part.items()}
            state.update(part)
    out["load_s"] = time.perf_counter() - t0
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    out["rss_mb"] = psutil.Process().memory_info().rss / MB
    out.update({f"load_{k}": v for k, v in status_mb().items()})
    if mode == "ours":
        model.logits([1, 2, 3])  # touches every dense weight and the routed experts of 3 tokens
        out["logits_rss_mb"] = psutil.Process().memory_info().rss / MB
        out["logits_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(mode: str, path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", str(path)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{mode} subprocess failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


PEERS = {
    "peer-pread": "peer: `load_file(shard, backend=\"pread\")`",
    "peer-copy": "peer: `load_file(shard)` + one copy (= `load_state_dict`)",
    "peer-mmap": "peer: `load_file(shard)` as is (lazy mmap)",
}


def table(disk: int, base: dict[str, float], ours: dict[str, float], peers: dict[str, dict[str, float]]) -> str:
    d_mb = disk / MB

    def row(name: str, r: dict[str, float], pre: str = "") -> str:
        p, a = r[pre + "peak_mb"] - base["peak_mb"], r[pre + "rss_mb"] - base["rss_mb"]
        anon, file = (r.get(f"load_{k}", base[f"load_{k}"]) - base[f"load_{k}"] for k in ("RssAnon", "RssFile"))
        split = f"{anon:,.0f} / {file:,.0f} MB" if not pre else "-"
        secs = f"{r['load_s']:.2f} s" if not pre else "-"
        return f"| {name} | {p:,.0f} MB | **{p / d_mb:.2f}** | {a:,.0f} MB | {a / d_mb:.2f} | {split} | {secs} |"

    ref = peers.get("peer-pread") or peers["peer-copy"]
    peak = {k: v["peak_mb"] - base["peak_mb"] for k, v in [("ours", ours), ("ref", ref)]}
    return "\n".join([
        f"Checkpoint on disk: **{disk / 1e9:.2f} GB** ({d_mb:,.0f} MiB in 4 shards; FP4 experts, FP8 linears, "
        f"BF16/FP32 rest). Baseline, a process that only imports torch, safetensors and v4cli: peak "
        f"{base['peak_mb']:,.0f} MiB, subtracted below. MB = MiB; \"/ disk\" = that memory over the size on disk.",
        "",
        "| loader | peak RSS | / disk | RSS after | / disk | anon / file-backed after | load time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("ours: `load_model(dtype=bf16)` (mmap)", ours),
        row("ours, then `model.logits([1,2,3])`", ours, "logits_"),
        *(row(PEERS[k], v) for k, v in peers.items()),
        "",
        f"Peak RSS of the load, ours / {'pread' if 'peer-pread' in peers else 'copy'} peer: "
        f"**{peak['ours'] / max(peak['ref'], 1.0):.2f}**; load time ours / that peer: "
        f"{ours['load_s'] / ref['load_s']:.1f} (warm page cache; times are noisy on a shared machine).",
    ])


def write_results(body: str, cmd: str) -> None:
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.exists() else "# v4 benchmark results\n"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    section = (f"{SECTION}\n\n{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs, "
               f"{mem:.0f} GiB RAM, Python {platform.python_version()}. Command: `{cmd}`\n\n{body}\n")
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:  # replace only our section: up to the next "## " heading or the end
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    results.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=HERE / "out" / "ckpt-1g", help="cached synthetic checkpoint")
    ap.add_argument("--rebuild", action="store_true", help="write the checkpoint again")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.dir)))
        return
    # config.json is written after the shards, so its presence means a complete checkpoint
    if a.rebuild or not (a.dir / "config.json").exists():
        shutil.rmtree(a.dir, ignore_errors=True)
        t0 = time.perf_counter()
        run_child("build", a.dir)
        print(f"wrote {a.dir} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    disk = disk_bytes(a.dir)
    assert disk >= 1e9, f"checkpoint is only {disk / 1e9:.2f} GB"
    import safetensors.torch  # only to see which peers this version supports

    modes = [m for m in PEERS if m != "peer-pread" or "backend" in inspect.signature(
        safetensors.torch.load_file).parameters]
    base, ours = run_child("baseline", a.dir), run_child("ours", a.dir)
    body = table(disk, base, ours, {m: run_child(m, a.dir) for m in modes})
    print(body)
    write_results(body, "python bench/load_memory.py" + (f" --dir {a.dir}" if a.dir != ap.get_default("dir") else ""))


if __name__ == "__main__":
    main()
