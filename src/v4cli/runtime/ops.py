"""The one seam between the model and its kernels.

The model calls only these names. Each resolves to a compiled kernel when one is built for the
tensor's device and otherwise to its PyTorch twin in `ops_ref` (same signature, tested against it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ops_ref

OP_NAMES = ("fp8_linear", "fp4_linear", "dense_linear", "moe_experts", "sparse_attention", "indexer_scores",
            "hc_sinkhorn", "rope", "hadamard", "fp8_round", "fp4_round")

_impl: dict[str, Callable[..., Any]] = {name: getattr(ops_ref, name) for name in OP_NAMES}


def register(name: str, fn: Callable[..., Any]) -> None:
    """Install a kernel for `name` (it must keep the twin's signature and results)."""
    if name not in _impl:
        raise KeyError(f"unknown op {name!r}; ops are {', '.join(OP_NAMES)}")
    _impl[name] = fn


def reset() -> None:
    """Back to the PyTorch twins."""
    for name in OP_NAMES:
        _impl[name] = getattr(ops_ref, name)


def backend(name: str) -> str:
    fn = _impl[name]
    return "torch" if fn is getattr(ops_ref, name) else getattr(fn, "__module__", "kernel")


def fp8_linear(x, weight, scale, act_quant):  # noqa: ANN001, ANN201 - signature documented in ops_ref
    return _impl["fp8_linear"](x, weight, scale, act_quant)


def fp4_linear(x, packed, scale, act_quant):  # noqa: ANN001, ANN201
    return _impl["fp4_linear"](x, packed, scale, act_quant)


def dense_linear(x, weight):  # noqa: ANN001, ANN201
    return _impl["dense_linear"](x, weight)


def moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant):  # noqa: ANN001, ANN201
    return _impl["moe_experts"](x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant)


def sparse_attention(q, kv, sink, idx, softmax_scale, dense=None, limit=None):  # noqa: ANN001, ANN201
    return _impl["sparse_attention"](q, kv, sink, idx, softmax_scale, dense, limit)


def indexer_scores(q, weights, keys):  # noqa: ANN001, ANN201
    return _impl["indexer_scores"](q, weights, keys)


def hc_sinkhorn(mixes, scale, base, n, iters, eps):  # noqa: ANN001, ANN201
    return _impl["hc_sinkhorn"](mixes, scale, base, n, iters, eps)


def rope(x, cos, sin, inverse=False):  # noqa: ANN001, ANN201
    return _impl["rope"](x, cos, sin, inverse)


def hadamard(x):  # noqa: ANN001, ANN201
    return _impl["hadamard"](x)


def fp8_round(x, block, width=None):  # noqa: ANN001, ANN201
    return _impl["fp8_round"](x, block, width)


def fp4_round(x, block=32):  # noqa: ANN001, ANN201
    return _impl["fp4_round"](x, block)
