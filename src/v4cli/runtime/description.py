"""What a checkpoint folder holds, from its headers alone: layout, storage per tensor family, problems, and
the memory plan. No tensor data is read (the model is built on the meta device only to check the names)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, grouped
from .weights import Reading, read_checkpoint

# Tensor families as a user thinks of them, by official name (first match wins).
_FAMILIES: list[tuple[str, str]] = [
    ("embedding/head", r"^(embed|head)\.weight$"),
    ("routed experts", r"\.ffn\.experts\."),
    ("shared expert", r"\.ffn\.shared_experts\."),
    ("router", r"\.ffn\.gate\.weight$"),
    ("norms", r"norm\.weight$"),
    ("indexer", r"\.attn\.indexer\..*weight$"),
    ("compressor", r"\.attn\.compressor\..*weight$"),
    ("attention", r"\.attn\.w\w+\.weight$"),
    ("MTP projections", r"^mtp\.\d+\.[eh]_proj\.weight$"),
    ("mHC", r"(^|\.)hc_"),
]
_LABELS = {"F8_E4M3": "FP8", "I8": "FP4", "BF16": "BF16", "F16": "FP16", "F32": "FP32", "F64": "FP64"}
_ORDER = list(_LABELS.values())


def family(official: str) -> str | None:
    """The family of an official tensor name; None for scales, index tables and small parameters."""
    return next((f for f, rx in _FAMILIES if re.search(rx, official)), None)


def storage_by_family(r: Reading) -> dict[str, str]:
    """Family -> its storage formats as found on disk ("FP8", "FP4", "BF16", "BF16 + FP32", ...)."""
    found: dict[str, set[str]] = {}
    for name, off in r.match.names.items():
        if name not in r.ckpt.where or (fam := family(off)) is None:
            continue
        label = _LABELS.get(r.ckpt.dtype_name(name))
        if label is not None:
            found.setdefault(fam, set()).add(label)
    for name in r.match.fused:
        if name in r.ckpt.where and (label := _LABELS.get(r.ckpt.dtype_name(name))):
            found.setdefault("routed experts", set()).add(label)
    order = [f for f, _ in _FAMILIES]
    return {f: " + ".join(sorted(found[f], key=_ORDER.index)) for f in order if f in found}


def describe(path: str | Path, context: int | None = None, device: str = "auto", dtype_bytes: int = 2
             ) -> dict[str, Any]:
    """Layout, storage formats, problems (one line each, grouped per file, with the remedy) and the memory plan
    at `context` (default: the model's longest) of a checkpoint folder. A folder that cannot be read at all
    gives its problems and no layout."""
    from . import devices
    from .plan import plan_reading

    try:
        r = read_checkpoint(path)
    except CheckpointError as e:  # nothing to describe beyond the reason
        return {"layout": None, "storage": {}, "problems": [str(p) for p in grouped(e.problems)],
                "remedy": e.remedy}
    ck = r.ckpt
    total = sum(ck.nbytes(n) for n in ck.names())
    ctx = context or r.args.max_position_embeddings
    mp = plan_reading(r, ctx, 1, dtype_bytes, device=devices.resolve(device))  # the headers just read, not again
    out: dict[str, Any] = {
        "layout": r.layout.key, "layout_title": r.layout.title,
        "tensors": len(ck.names()) + len(ck.lost), "tensors_recognised": r.match.recognised,
        "storage": storage_by_family(r), "mtp_on_disk": r.args.num_nextn_predict_layers > 0,
        "tensor_bytes": total,
        "memory_plan": mp.summary(),
        "problems": [str(p) for p in grouped(r.problems)],
    }
    if r.problems:
        out["remedy"] = r.error().remedy
    return out
