"""The check's verdicts and its two renderings: GPU_RESULTS.md (every row) and the short summary printed last."""

from __future__ import annotations

import statistics
from typing import Any


def verdicts(res: dict[str, Any]) -> dict[str, bool]:
    """Section -> passed. Correctness and completeness only: the floors are reported, not required."""
    meta, cases, status = res.get("meta", {}), res.get("ops", []), res.get("ops_status", {})
    checked = meta.get("checked_ops", [])
    layers = res.get("layers", [])
    return {
        "build": bool(meta.get("built_ok")),
        "ops": bool(checked) and all(status.get(op) == "done" for op in checked) and all(c["ok"] for c in cases),
        "e2e": bool(res.get("e2e", {}).get("ok")),
        "layer": bool(layers) and all(r.get("ok") for r in layers) and len(layers) == res.get("layer_rows", -1),
    }


def _verdict_list(v: dict[str, bool]) -> str:
    return ", ".join(f"{k} {'pass' if ok else 'FAIL'}" for k, ok in v.items())


def _why(r: dict[str, Any]) -> str:
    """Why a case failed, in a few words."""
    if r.get("error"):
        return str(r["error"])
    return "NaN" if r.get("nan") else f"err {r['err']:.2e}"


def _f(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _ceilings(res: dict[str, Any]) -> list[str]:
    c = res.get("ceilings")
    if not c:
        return ["(not measured)"]
    timer = res.get("meta", {}).get("timer", "?")
    return [f"- copy bandwidth (read + written): **{c['copy_bw'] / 1e12:.3g} TB/s** "
            f"({c['copy_bytes'] / 2**30:.2f} GiB copy, {timer}, median)",
            f"- matrix rate: **{c['matmul_rate'] / 1e12:.3g} TFLOP/s** ({c['matmul_n']}^3 {c['matmul_dtype']} "
            f"torch.matmul on random data, {timer}, median)"]


def markdown(res: dict[str, Any]) -> str:
    m, v = res.get("meta", {}), verdicts(res)
    out = [f"# Device check: {m.get('device_name', '?')}", "",
           f"{m.get('date', '?')}; torch {m.get('torch')}, CUDA {m.get('cuda')}, Python {m.get('python')}; "
           f"widths {m.get('dims')}; seed {m.get('seed')}.", "",
           f"**Overall: {'PASS' if res.get('passed') else 'FAIL'}** "
           f"({_verdict_list(v)}). The exit code is correctness "
           "and completeness; the floors are reported, not required.", "",
           "## Build", "", *(f"- {ln}" for ln in m.get("build_lines", [])),
           f"- build and load: {_f(m.get('build_s'), '.0f')} s", "", "## Ceilings", "", *_ceilings(res), ""]
    out += ["## Kernels against their twins", "",
            "error = ||out - ref|| / ||ref||; ref `f64`: the twin (or its formula) on float64 upcasts of the same "
            "(quantized) inputs; `twin`: the twin in the inputs' dtype (its contract rounds between steps). "
            "twin err: the twin's own error against the same reference. On a GPU the outputs are carved from "
            "NaN-poisoned memory (an unwritten element fails as NaN). "
            "floor: the larger of bytes / copy bandwidth and flops / matrix rate; time / floor in %.", "",
            "| op | shape | dtype | ref | error | twin err | tol | ms | twin ms | floor ms | bound | time/floor "
            "| pass |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in res.get("ops", []):
        verdict = "pass" if c["ok"] else "**FAIL**" + (" NaN" if c.get("nan") else "") + (
            f" {c['error']}" if c.get("error") else "")
        out.append(f"| {c['op']} | {c['shape']} | {c['dtype']} | {c['ref']} | {_f(c.get('err'), '.2e')} | "
                   f"{_f(c.get('twin_err'), '.2e')} | {c['tol']:.0e} | {_f(c.get('ms'), '.4f')} | "
                   f"{_f(c.get('twin_ms'), '.4f')} | "
                   f"{_f(c.get('floor_ms'), '.4f')} | {c.get('bound', '')} | {_f(c.get('pct'), '.0f')}"
                   f"{'%' if 'pct' in c else ''} | {verdict} |")
    for op, st in res.get("ops_status", {}).items():
        if st != "done":
            out.append(f"| {op} | ({st}) | | | | | | | | | | | **FAIL** |")
    e = res.get("e2e", {})
    out += ["", "## Tiny model end to end (float32, no rounding): the device against the CPU twins", ""]
    if "equal" in e:
        out += [f"- {e['prompt_tokens']} prompt tokens, {e['new_tokens']} greedy tokens: "
                f"**{'equal' if e['equal'] else 'DIFFERENT'}** (same for the first {e['same_prefix']}); "
                f"max |logit difference| {e['max_logit_diff']:.3e} (largest |logit| {e['max_logit']:.2f}); "
                f"finite: {e['finite']}; {e['device_s']:.2f} s on the device, {e['ref_s']:.2f} s for the reference",
                f"- device tokens: {e['tokens']}", f"- reference tokens: {e['ref_tokens']}"]
    else:
        out.append(f"- **FAIL**: {e.get('error', 'not run')}")
    out += ["", f"## One layer, one decode step at {m.get('dims')}'s widths (bf16, simulate_quant=True)", "",
            "floor: the layer's weights (routed experts: the expected distinct experts of B tokens' top-k) plus "
            "the state the step reads, over the copy bandwidth. Target: within 2x.", "",
            "| layer | context | seqs | ms/step | floor ms | time/floor | MB read | finite |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res.get("layers", []):
        if "ms" in r:
            out.append(f"| {r['layer']} | {r['ctx']} | {r['batch']} | {r['ms']:.3f} | {_f(r.get('floor_ms'), '.3f')} | "
                       f"{_f(r.get('x_floor'), '.2f')}x | {r['moved'] / 1e6:.0f} | {r['finite']} |")
        else:
            out.append(f"| {r.get('layer')} | {r.get('ctx')} | {r.get('batch')} | **FAIL** {r.get('error', '')} "
                       "| | | | |")
    out += ["", "## Stages", "", "| stage | seconds | exit |", "| --- | --- | --- |"]
    out += [f"| {k} | {s['s']:.1f} | {s['rc']} |" for k, s in res.get("stages", {}).items()]
    return "\n".join(out) + "\n"


def summary(res: dict[str, Any]) -> str:
    """The short table printed last (the device tool returns only the end of the output)."""
    m, v = res.get("meta", {}), verdicts(res)
    lines = ["", "=" * 100, f"DEVICE CHECK SUMMARY  {m.get('device_name', '?')}  torch {m.get('torch')} "
             f"CUDA {m.get('cuda')}  {m.get('date', '')}", *(f"  {ln}" for ln in m.get("build_lines", []))]
    c = res.get("ceilings")
    if c:
        lines.append(f"  ceilings: copy {c['copy_bw'] / 1e12:.3g} TB/s, matmul {c['matmul_rate'] / 1e12:.3g} TFLOP/s "
                     f"({c['matmul_dtype']})")
    lines.append(f"  {'op':<17}{'pass':>9}  {'worst err/tol':>13}  {'timed':>5}  {'median time/floor':>17}  "
                 "first failure")
    by_op: dict[str, list[dict[str, Any]]] = {}
    for r in res.get("ops", []):
        by_op.setdefault(r["op"], []).append(r)
    for op in m.get("checked_ops", []):
        rs = by_op.get(op, [])
        worst = max((r["err"] / r["tol"] for r in rs if r.get("err") is not None), default=float("nan"))
        pcts = [r["pct"] for r in rs if "pct" in r]
        fail = next((f"{r['shape']}: {_why(r)}" for r in rs if not r["ok"]), "")
        status = res.get("ops_status", {}).get(op, "not run")
        if status != "done":
            fail = f"[{status}] {fail}"
        lines.append(f"  {op:<17}{sum(r['ok'] for r in rs):>4}/{len(rs):<4}  {worst:>13.3f}  {len(pcts):>5}  "
                     f"{(statistics.median(pcts) if pcts else float('nan')):>16.0f}%  {fail[:60]}")
    e = res.get("e2e", {})
    verdict = "tokens equal" if e.get("equal") else f"FAIL {e.get('error', 'tokens differ')}"
    diff = f", max logit diff {e['max_logit_diff']:.2e}" if "max_logit_diff" in e else ""
    lines.append(f"  e2e tiny model: {verdict}{diff}")
    lines.append("  layer step      ctx  seqs   ms/step  floor ms  time/floor")
    for r in res.get("layers", []):
        if "ms" in r:
            lines.append(f"  {r['layer']:<10}{r['ctx']:>9}{r['batch']:>6}{r['ms']:>10.3f}"
                         f"{_f(r.get('floor_ms'), '10.3f')}{_f(r.get('x_floor'), '11.2f')}x"
                         f"{'' if r['finite'] else '  NOT FINITE'}")
        else:
            lines.append(f"  {r.get('layer')!s:<10}{r.get('ctx')!s:>9}{r.get('batch')!s:>6}  "
                         f"FAIL {r.get('error', '')[:70]}")
    lines.append("  stages: " + ", ".join(f"{k} {s['s']:.0f}s rc={s['rc']}" for k, s in res.get("stages", {}).items()))
    lines.append(f"  sections: {_verdict_list(v)}")
    lines.append(f"OVERALL: {'PASS' if res.get('passed') else 'FAIL'}")
    return "\n".join(lines)
