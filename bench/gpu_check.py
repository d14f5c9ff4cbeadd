"""The one device check of the CUDA kernels (issue 12), prepared to run once on a lent H200 in under 8 minutes:

    bash bench/gpu_check.sh      # nvidia-smi, then this script under `timeout 470`; the whole log in $OUT/log.txt

Stages, each in a process of its own (a kernel's bad address loses the CUDA context of its whole process), each
with a deadline that leaves the later ones their time (--budget, seconds for the whole run):
  setup     kernels.install("cuda"): the C++ kernels, then the CUDA ones against the device's own torch (1-3 min
            on 16 cores the first time, seconds from the cache); the ceilings: copy bandwidth, bf16 matrix rate
  ops       every op with a CUDA kernel against its twin on fresh random inputs (gpucheck/cases_*.py), on
            NaN-poisoned memory, timed against its floor; restarted after an op that loses the context
  e2e       the tiny model's greedy tokens on the GPU against the CPU twins (float32, no rounding)
  layer4    one decode step of a CSA layer at V4-Flash's widths, 8K and 128K context, 1/8/32 sequences
  layer128  the same for an HCA layer
Writes GPU_RESULTS.md and results.json under --out (and GPU_RESULTS.md to --copy-to), prints a summary last,
and exits 0 only if every section passed.

The CPU dry run (tests/test_gpu_check.py) runs the same code with the CPU kernels at tiny widths:
    python bench/gpu_check.py --device cpu --quick --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import torch  # noqa: E402
from gpucheck import common, e2e, layer, opcheck, report  # noqa: E402

from v4cli.runtime import kernels, ops  # noqa: E402

STAGES = ("setup", "ops", "e2e", "layer4", "layer128")
# Seconds each stage leaves, at its deadline, before the end of the run: the later stages' time.
RESERVE = {"setup": 150, "ops": 150, "e2e": 110, "layer4": 55, "layer128": 5}


@dataclasses.dataclass(frozen=True)
class Settings:
    warmup: int
    reps: int  # timed calls per op case (median)
    flush: int  # bytes written before each timed call (> 4x the H200's 60 MB L2)
    poison: int  # bytes of NaN-filled memory the outputs are carved from
    copy_bytes: int
    matmul_n: int
    ceil_reps: int
    steps: int  # timed decode steps per layer configuration


GPU = Settings(warmup=3, reps=20, flush=256 << 20, poison=2 << 30, copy_bytes=2 << 30, matmul_n=8192, ceil_reps=20,
               steps=5)
CPU = Settings(warmup=1, reps=3, flush=0, poison=0, copy_bytes=64 << 20, matmul_n=512, ceil_reps=5, steps=2)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny widths (the CPU dry run)")
    p.add_argument("--out", default="bench/out/gpu_check")
    p.add_argument("--copy-to", help="also write GPU_RESULTS.md here")
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (fresh inputs every run)")
    p.add_argument("--budget", type=float, default=455.0, help="seconds for the whole run")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    p.add_argument("--ops", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.seed is None:
        a.seed = int(time.time()) % 100_000
    return a


# ---- the stages (child processes) ------------------------------------------------------------------------------

def _write(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def _build_errors(device: torch.device, out: Path) -> None:
    """A failed build's compiler output (kernel_build records it in FAILED): into the log and build_errors.txt."""
    from v4cli.runtime import cuda_kernels, kernel_build

    builds = [kernels.CPU] + ([cuda_kernels.build()] if device.type == "cuda" else [])
    for b in builds:
        failed = kernel_build.folder(b) / "FAILED"
        if failed.exists():
            text = failed.read_text(errors="replace")
            print(f"---- {b.what}: build failed; the last lines of {failed}:")
            print("\n".join(text.splitlines()[-120:]))
            with (out / "build_errors.txt").open("a") as f:
                f.write(f"==== {b.what} ({failed})\n{text}\n")


def stage_setup(a: argparse.Namespace, bench: common.Bench, s: Settings) -> dict[str, Any]:
    dev = bench.device
    t0 = time.monotonic()
    line = kernels.install(a.device)
    build_s = time.monotonic() - t0
    cpu_line, _, cuda_line = line.partition("; ")
    lines = [cpu_line] + ([cuda_line or "(no CUDA line)"] if dev.type == "cuda" else [])
    for ln in lines:
        print(f"build: {ln}", flush=True)
    print(f"build: {build_s:.0f} s", flush=True)
    _build_errors(dev, Path(a.out))
    backends = {op: ops.backend(op, dev.type) for op in ops.OP_NAMES}
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_name": torch.cuda.get_device_name(dev) if bench.cuda else f"CPU dry run ({platform.machine()})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "seed": a.seed, "dims": (common.QUICK if a.quick else common.FLASH).name, "build_lines": lines,
        "timer": "CUDA events" if bench.cuda else "host clock",
        "build_s": build_s, "backends": backends, "checked_ops": [op for op, b in backends.items() if b != "torch"],
        "built_ok": cpu_line.startswith("C++ CPU kernels") and (dev.type != "cuda" or
                                                               cuda_line.startswith("CUDA kernels:")),
    }
    if bench.cuda:
        props = torch.cuda.get_device_properties(dev)
        info["sm_count"], info["capability"] = props.multi_processor_count, f"{props.major}.{props.minor}"
    c = common.measure_ceilings(bench, s.copy_bytes, s.matmul_n, s.ceil_reps)
    info["ceilings"] = dataclasses.asdict(c)
    print(f"ceilings: copy {c.copy_bw / 1e12:.3f} TB/s, matmul {c.matmul_rate / 1e12:.1f} TFLOP/s ({c.matmul_dtype})",
          flush=True)
    return info


def _skipped(op: str, why: str) -> dict[str, Any]:
    return {"kind": "case", "op": op, "shape": "(the rest)", "dtype": "", "tol": 0.0, "ref": "", "ok": False,
            "error": why}


def stage_ops(a: argparse.Namespace, bench: common.Bench, ceil: common.Ceilings | None, work: Path) -> int:
    """Every op in --ops against its twin; records go to ops.jsonl as they come. Exit 3: the context is lost."""
    dims = common.QUICK if a.quick else common.FLASH
    log = work / "ops.jsonl"

    def emit(rec: dict[str, Any]) -> None:
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    for op in filter(None, a.ops.split(",")):
        emit({"kind": "start", "op": op})
        rng = common.Rng(a.seed + 1000 * ops.OP_NAMES.index(op), bench.device)
        try:
            for case in opcheck.BUILDERS[op](dims, rng):
                if time.time() > a.deadline:
                    emit(_skipped(op, "skipped: out of time"))
                    break
                rec = opcheck.run_case(case, bench, ceil)
                print(opcheck.line(rec), flush=True)
                emit({"kind": "case", **rec})
                if not rec["ok"] and not bench.context_ok():
                    emit({"kind": "broken", "op": op, "error": f"CUDA context lost at {rec['shape']}"})
                    return 3
        except Exception as e:  # noqa: BLE001 - building the inputs failed: recorded, on to the next op
            emit(_skipped(op, f"building the inputs: {opcheck.first_line(e)}"))
            if not bench.context_ok():
                emit({"kind": "broken", "op": op, "error": "CUDA context lost"})
                return 3
        emit({"kind": "done", "op": op})
    return 0


def stage_layer(a: argparse.Namespace, bench: common.Bench, ceil: common.Ceilings | None, s: Settings, ratio: int,
                path: Path) -> None:
    dims = common.QUICK if a.quick else common.FLASH
    args = common.model_args(dims)
    name = "CSA" if ratio == 4 else "HCA"
    configs = [(ctx, b) for ctx in dims.contexts for b in dims.decode]
    rows: list[dict[str, Any]] = []
    broken = ""
    try:
        blk = layer.build_block(args, args.compress_ratios.index(ratio), bench.device, torch.bfloat16, a.seed)
    except Exception as e:  # noqa: BLE001
        blk, broken = None, f"building the layer: {opcheck.first_line(e)}"
    for ctx, batch in configs:
        row: dict[str, Any] = {"layer": name, "ratio": ratio, "ctx": ctx, "batch": batch, "ok": False}
        if broken or time.time() > a.deadline:
            row["error"] = broken or "skipped: out of time"
        else:
            try:
                row = layer.time_steps(blk, args, ratio, ctx, batch, torch.bfloat16, bench, ceil, s.steps,
                                       a.seed + ctx + batch)
            except Exception as e:  # noqa: BLE001
                row["error"] = opcheck.first_line(e)
                if not bench.context_ok():
                    broken = "CUDA context lost"
        rows.append(row)
        if "ms" in row:
            floor = f" floor {row['floor_ms']:.3f} ms, {row['x_floor']:.2f}x" if "floor_ms" in row else ""
            print(f"layer {name} ctx={ctx} seqs={batch}: {row['ms']:.3f} ms/step{floor}"
                  f"{'' if row['finite'] else ' NOT FINITE'}", flush=True)
        else:
            print(f"layer {name} ctx={ctx} seqs={batch}: FAIL {row['error']}", flush=True)
        _write(path, rows)


def run_stage(a: argparse.Namespace) -> int:
    work, dev = Path(a.work), torch.device(a.device)
    s = GPU if dev.type == "cuda" else CPU
    bench = common.Bench(dev, s.warmup, s.reps, s.flush, s.poison)
    if a.stage == "setup":
        _write(work / "setup.json", stage_setup(a, bench, s))
        return 0
    kernels.install(a.device)  # the build is cached by now: loads it
    setup = work / "setup.json"
    c = json.loads(setup.read_text()).get("ceilings") if setup.exists() else None
    ceil = common.Ceilings(**c) if c else None
    if a.stage == "ops":
        return stage_ops(a, bench, ceil, work)
    if a.stage == "e2e":
        try:
            res = e2e.run(dev, work, a.seed)
        except Exception as e:  # noqa: BLE001
            res = {"ok": False, "error": opcheck.first_line(e)}
        print(f"e2e: {res}", flush=True)
        _write(work / "e2e.json", res)
        return 0
    ratio = int(a.stage.removeprefix("layer"))
    stage_layer(a, bench, ceil, s, ratio, work / f"{a.stage}.json")
    return 0


# ---- the orchestrator ---------------------------------------------------------------------------------------------

def _child(a: argparse.Namespace, stage: str, work: Path, deadline: float, extra: list[str]) -> tuple[Any, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--work", str(work), "--device", a.device,
           "--seed", str(a.seed), "--deadline", str(deadline), "--out", a.out, *(["--quick"] if a.quick else []),
           *extra]
    t0 = time.time()
    try:
        rc: Any = subprocess.run(cmd, timeout=max(deadline - t0, 0) + 30).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return rc, time.time() - t0


def _read_ops(work: Path) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    cases, status, started = [], {}, []
    log = work / "ops.jsonl"
    for ln in log.read_text().splitlines() if log.exists() else []:
        rec = json.loads(ln)
        kind = rec.pop("kind")
        if kind == "case":
            cases.append(rec)
        elif kind == "start":
            started.append(rec["op"])
        elif kind == "done":
            status[rec["op"]] = "done"
        else:
            status[rec["op"]] = rec["error"]
    return cases, status, started


def orchestrate(a: argparse.Namespace) -> int:
    end = time.time() + a.budget
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpucheck-"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dims = common.QUICK if a.quick else common.FLASH
    res: dict[str, Any] = {"meta": {}, "ops": [], "ops_status": {}, "e2e": {}, "layers": [], "stages": {},
                           "layer_rows": 2 * len(dims.contexts) * len(dims.decode)}
    print(f"device check on {a.device}: widths {dims.name}, seed {a.seed}, budget {a.budget:.0f} s, work {work}",
          flush=True)
    for stage in STAGES:
        deadline = end - RESERVE[stage]
        print(f"==== {stage} (deadline in {deadline - time.time():.0f} s)", flush=True)
        if stage == "ops":
            todo = list(res["meta"].get("checked_ops", []))
            for attempt in range(4):  # again after an op that lost the context, with the ops not yet done
                if not todo or time.time() > deadline:
                    break
                rc, secs = _child(a, stage, work, deadline, ["--ops", ",".join(todo)])
                res["stages"][f"ops#{attempt + 1}"] = {"rc": rc, "s": secs}
                res["ops"], status, started = _read_ops(work)
                if rc != 0 and started and started[-1] not in status:
                    status[started[-1]] = f"the stage process ended (exit {rc})"
                    with (work / "ops.jsonl").open("a") as f:
                        f.write(json.dumps({"kind": "broken", "op": started[-1], "error": status[started[-1]]}) + "\n")
                res["ops_status"] = status
                todo = [op for op in todo if op not in status]
            for op in todo:
                res["ops_status"].setdefault(op, "not run (out of time)")
        else:
            rc, secs = _child(a, stage, work, deadline, [])
            res["stages"][stage] = {"rc": rc, "s": secs}
            part = work / f"{stage}.json"
            got = json.loads(part.read_text()) if part.exists() else None
            if stage == "setup":
                res["meta"] = got or {"built_ok": False}
                res["ceilings"] = res["meta"].pop("ceilings", None)
            elif stage == "e2e":
                res["e2e"] = got or {"ok": False, "error": f"the stage process ended (exit {rc})"}
            else:
                res["layers"] += got or [{"layer": stage, "ok": False, "error": f"the stage process ended (exit {rc})"}]
        res["passed"] = all(report.verdicts(res).values())
        _write(out / "results.json", res)
        (out / "GPU_RESULTS.md").write_text(report.markdown(res))
    if a.copy_to:
        shutil.copyfile(out / "GPU_RESULTS.md", a.copy_to)
    print(report.summary(res), flush=True)
    return 0 if res["passed"] else 1


def main() -> int:
    a = parse()
    return run_stage(a) if a.stage else orchestrate(a)


if __name__ == "__main__":
    sys.exit(main())
