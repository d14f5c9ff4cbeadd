"""One op against its twin: on poisoned memory, by relative L2 error against a float64 reference (or the twin in
the inputs' dtype where the op's contract rounds between its steps), and timed against its floor."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from v4cli.runtime import ops, ops_ref

from . import cases_attn, cases_linear, cases_point
from .common import Bench, Case, Ceilings, Dims, Rng, rel_err

BUILDERS: dict[str, Callable[[Dims, Rng], Iterator[Case]]] = {
    name: getattr(mod, name) for mod in (cases_linear, cases_attn, cases_point) for name in ops.OP_NAMES
    if hasattr(mod, name)}
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def upcast(a: Any) -> Any:
    """Float tensors (also inside lists) to float64; quantized weights, scales and indices as they are."""
    if isinstance(a, torch.Tensor):
        return a.double() if a.dtype in FLOATS else a
    if isinstance(a, (list, tuple)):
        return type(a)(upcast(x) for x in a)
    return a



def _outputs(result: Any) -> list[torch.Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def run_case(case: Case, bench: Bench, ceil: Ceilings | None) -> dict[str, Any]:
    """The record of one case: error, twin's error, pass, and (timed cases) time and floor."""
    rec: dict[str, Any] = {"op": case.op, "shape": case.shape, "dtype": case.dtype, "tol": case.tol,
                           "ref": case.ref_kind, "ok": False}
    fn = getattr(ops, case.op)
    try:
        bench.poison()
        got = _outputs(fn(*case.args))
        bench.sync()  # a bad address surfaces here, charged to this case
        twin_fn = getattr(ops_ref, case.op)
        twin = _outputs(twin_fn(*case.args))
        if case.ref is twin_fn:  # the twin in the inputs' dtype is the reference itself
            ref, rec["twin_err"] = twin, None
        else:
            ref = _outputs(case.ref(*case.args) if case.ref else twin_fn(*upcast(case.args)))
            rec["twin_err"] = max((rel_err(t, r) for t, r in zip(twin, ref, strict=True)), default=0.0)
        shapes = [(tuple(g.shape), g.dtype) for g in got] == [(tuple(t.shape), t.dtype) for t in twin]
        rec["nan"] = any(bool(torch.isnan(g).any()) for g in got)
        rec["err"] = max((rel_err(g, r) for g, r in zip(got, ref, strict=True)), default=0.0)
        rec["ok"] = shapes and not rec["nan"] and rec["err"] < case.tol  # a NaN error fails the comparison too
        if not shapes:
            rec["error"] = (f"shape/dtype {[(tuple(g.shape), str(g.dtype)) for g in got]} != twin's "
                            f"{[(tuple(t.shape), str(t.dtype)) for t in twin]}")
        del got, twin, ref
        if case.timed:
            rec["ms"] = bench.time(lambda: fn(*case.args))
            rec["twin_ms"] = bench.time(lambda: twin_fn(*case.args), reps=max(3, bench.reps // 4), warmup=1)
            if ceil is not None:
                rec["floor_ms"], rec["bound"] = ceil.floor(case.moved, case.flops)
                rec["pct"] = 100.0 * rec["ms"] / rec["floor_ms"] if rec["floor_ms"] > 0 else math.inf
    except Exception as e:  # noqa: BLE001 - recorded; the check goes on with the next case
        rec["ok"], rec["error"] = False, first_line(e)
    return rec


def line(rec: dict[str, Any]) -> str:
    """One case in one line of the log."""
    if "err" not in rec:
        return f"{rec['op']:<16} {rec['shape']:<44} {rec['dtype']:<4} FAIL {rec.get('error', '')}"
    t = ""
    if "ms" in rec:
        t = f"  {rec['ms']:.4f} ms (twin {rec['twin_ms']:.4f})"
        if "floor_ms" in rec:
            t += f" floor {rec['floor_ms']:.4f} ({rec['bound']}) {rec['pct']:.0f}%"
    verdict = "ok" if rec["ok"] else "FAIL" + (" NaN" if rec.get("nan") else "") + (f" {rec['error']}"
                                                                                   if "error" in rec else "")
    twin = "" if rec["twin_err"] is None else f"twin {rec['twin_err']:.2e}, "
    return (f"{rec['op']:<16} {rec['shape']:<44} {rec['dtype']:<4} err {rec['err']:.2e} ({twin}ref {rec['ref']}) "
            f"tol {rec['tol']:.0e}{t}  {verdict}")
