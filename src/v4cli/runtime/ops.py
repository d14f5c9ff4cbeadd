"""The one seam between the model and its kernels.

The model calls only these names. Each resolves to the kernel registered for its first tensor's device type
("cpu", "cuda") and otherwise to its PyTorch twin in `ops_ref` (same signature, tested against it), so an op
with no kernel for a device still runs there, and a tensor on another device never reaches a kernel built for
the wrong one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import ops_ref

OP_NAMES = ("fp8_linear", "fp4_linear", "dense_linear", "moe_experts", "sparse_attention", "indexer_scores",
            "hc_sinkhorn", "rope", "hadamard", "fp8_round", "fp4_round", "rms_norm", "hc_pre", "hc_post")
DEVICES = ("cpu", "cuda")

# op -> device type -> kernel; a device type missing from an op's table runs the twin
_impl: dict[str, dict[str, Callable[..., Any]]] = {name: {} for name in OP_NAMES}
_twin: dict[str, Callable[..., Any]] = {name: getattr(ops_ref, name) for name in OP_NAMES}


def register(name: str, fn: Callable[..., Any], device: str = "cpu") -> None:
    """Install a kernel for `name` on `device` (it must keep the twin's signature and results)."""
    if name not in _impl:
        raise KeyError(f"unknown op {name!r}; ops are {', '.join(OP_NAMES)}")
    if device not in DEVICES:
        raise KeyError(f"unknown device type {device!r}; kernels register for {', '.join(DEVICES)}")
    _impl[name][device] = fn


def reset(device: str | None = None) -> None:
    """Back to the PyTorch twins, on `device` or on every device."""
    for table in _impl.values():
        if device is None:
            table.clear()
        else:
            table.pop(device, None)


def backend(name: str, device: str = "cpu") -> str:
    fn = _impl[name].get(device)
    return "torch" if fn is None else getattr(fn, "__module__", "kernel")


def _pick(name: str, t: Any) -> Callable[..., Any]:
    return _impl[name].get(t.device.type, _twin[name])


def fp8_linear(x, weight, scale, act_quant):  # noqa: ANN001, ANN201 - signature documented in ops_ref
    return _pick("fp8_linear", x)(x, weight, scale, act_quant)


def fp4_linear(x, packed, scale, act_quant):  # noqa: ANN001, ANN201
    return _pick("fp4_linear", x)(x, packed, scale, act_quant)


def dense_linear(x, weight):  # noqa: ANN001, ANN201
    return _pick("dense_linear", x)(x, weight)


def moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant):  # noqa: ANN001, ANN201
    return _pick("moe_experts", x)(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant)


def sparse_attention(q, kv, sink, idx, softmax_scale, dense=None, limit=None):  # noqa: ANN001, ANN201
    return _pick("sparse_attention", q)(q, kv, sink, idx, softmax_scale, dense, limit)


def indexer_scores(q, weights, keys):  # noqa: ANN001, ANN201
    return _pick("indexer_scores", q)(q, weights, keys)


def hc_sinkhorn(mixes, scale, base, n, iters, eps):  # noqa: ANN001, ANN201
    return _pick("hc_sinkhorn", mixes)(mixes, scale, base, n, iters, eps)


def rms_norm(x, weight, eps):  # noqa: ANN001, ANN201
    return _pick("rms_norm", x)(x, weight, eps)


def hc_pre(x, fn, scale, base, n, iters, eps, norm_eps):  # noqa: ANN001, ANN201
    return _pick("hc_pre", x)(x, fn, scale, base, n, iters, eps, norm_eps)


def hc_post(o, x, post, comb):  # noqa: ANN001, ANN201
    return _pick("hc_post", o)(o, x, post, comb)


def rope(x, cos, sin, inverse=False):  # noqa: ANN001, ANN201
    return _pick("rope", x)(x, cos, sin, inverse)


def hadamard(x):  # noqa: ANN001, ANN201
    return _pick("hadamard", x)(x)


def fp8_round(x, block, width=None):  # noqa: ANN001, ANN201
    return _pick("fp8_round", x)(x, block, width)


def fp4_round(x, block=32):  # noqa: ANN001, ANN201
    return _pick("fp4_round", x)(x, block)
