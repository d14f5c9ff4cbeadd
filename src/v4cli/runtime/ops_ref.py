"""PyTorch twins of every kernel behind `ops`: the reference semantics, same signatures.

Each function here is the ground truth its compiled counterpart (csrc/) is tested against.
"""

from __future__ import annotations

import torch

from . import pointwise, quant


def _rows_per_block(row_elems: int, budget: int = 1 << 24) -> int:
    """Query rows per block so one block's intermediate holds at most `budget` floats (64 MiB)."""
    return max(1, budget // max(row_elems, 1))


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    """y = x @ dequant(W8, S)^T; with `act_quant` the input is first rounded as the reference's FP8 GEMM does."""
    xin = quant.act_quant(x) if act_quant else x
    w = quant.dequant_fp8(weight, scale, torch.float32)
    return (xin.float() @ w.t()).to(x.dtype)


def fp4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    """y = x @ dequant_fp4(W4, S)^T; e2m1 weights, one UE8M0 scale per 32 inputs."""
    xin = quant.act_quant(x) if act_quant else x
    w = quant.dequant_fp4(packed, scale, torch.float32)
    return (xin.float() @ w.t()).to(x.dtype)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y = x W^T for a float32 or bfloat16 weight [N, K], in the wider of x's and W's dtypes (both are cast
    to it first; widening bfloat16 is exact, so a bfloat16 head gives the float32 upcast product's logits).

    The kernels compute each row the same way whatever the other rows (torch.mm does not: a GEMV for one
    row and other blockings for more change a row's result by an ulp).
    """
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return torch.nn.functional.linear(x.to(dtype), weight.to(dtype))


def moe_experts(
    x: torch.Tensor, weights: torch.Tensor, picks: torch.Tensor, w1: list[torch.Tensor], s1: list[torch.Tensor],
    w3: list[torch.Tensor], s3: list[torch.Tensor], w2: list[torch.Tensor], s2: list[torch.Tensor],
    limit: float, act_quant: bool,
) -> torch.Tensor:
    """The experts' SwiGLU step for tokens x [T, D] (the model's dtype), each with k experts: picks [T, k]
    (an expert at most once per token), routing weights [T, k] float32. Expert e is (w1[e], w3[e], w2[e])
    with scales s*[e] in its own format: e4m3 + 128x128 scales, packed e2m1 + per-32 scales, or a float
    weight (its scale an empty tensor). Per token and expert, in x's dtype between the steps:

        w2(weight * silu(min(w1 x, limit)) * clamp(w3 x, -limit, limit))   (no clamp when limit <= 0)

    and the float32 sum over a token's experts in ascending order; float32 [T, D] out. (The shared expert
    is one more expert with weight 1, picked by every token: multiplying by 1 is exact.)
    """
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    counts = torch.bincount(picks.flatten(), minlength=len(w1)).tolist()
    for e, count in enumerate(counts):
        if count == 0:
            continue
        rows, slot = torch.where(picks == e)  # rows are unique: one pick of e per token at most
        xe = x[rows]
        gate, up = _linear(xe, w1[e], s1[e], act_quant).float(), _linear(xe, w3[e], s3[e], act_quant).float()
        if limit > 0:
            up = up.clamp(-limit, limit)
            gate = gate.clamp(max=limit)
        h = weights[rows, slot, None] * (pointwise.silu(gate) * up)
        y[rows] += _linear(h.to(x.dtype), w2[e], s2[e], act_quant).float()
    return y


def _linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    """A linear layer in its weight's format (as model.linear.Linear runs it), output in x's dtype."""
    if weight.dtype == torch.float8_e4m3fn:
        return fp8_linear(x, weight, scale, act_quant)
    if weight.dtype == torch.int8:
        return fp4_linear(x, weight, scale, act_quant)
    return dense_linear(x, weight).to(x.dtype)


def sparse_attention(
    q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, idx: torch.Tensor, softmax_scale: float,
    dense: torch.Tensor | None = None, limit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shared-KV attention over gathered candidates with a per-head sink logit.

    q [S, H, D], kv [T, D] (keys = values), sink [H], idx [S, K] rows of kv (-1 = skip).
    `dense` [N, D] are further candidates that every query sees up to its own `limit` [S] (entry j
    iff j < limit[s]): HCA's compressed entries, read in place instead of gathered per query.
    o_h = sum_s e^(l_s - m) kv_s / (sum_s e^(l_s - m) + e^(sink_h - m)).
    """
    S, H, D = q.shape
    out = torch.empty_like(q)
    n_dense = 0 if dense is None else dense.shape[0]
    step = _rows_per_block(idx.shape[1] * D + H * n_dense)
    df = dense.float() if n_dense else None
    for s0 in range(0, S, step):  # blocks of queries bound the gathered [s, K, D] tensor
        qb, ib = q[s0 : s0 + step].float(), idx[s0 : s0 + step]
        gathered = kv[ib.clamp_min(0)].float()  # [s, K, D]
        logits = torch.einsum("shd,skd->shk", qb, gathered) * softmax_scale
        logits = logits.masked_fill((ib < 0)[:, None, :], float("-inf"))
        parts = [logits]
        if n_dense:
            dl = (qb.reshape(-1, D) @ df.t()).view(qb.shape[0], H, n_dense) * softmax_scale
            hidden = torch.arange(n_dense, device=q.device) >= limit[s0 : s0 + step, None]
            parts.append(dl.masked_fill_(hidden[:, None, :], float("-inf")))
        parts.append(sink.float().view(1, -1, 1).expand(qb.shape[0], -1, 1))
        probs = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
        o = torch.einsum("shk,skd->shd", probs[..., : ib.shape[1]], gathered)
        if n_dense:
            o += (probs[..., ib.shape[1] : -1].reshape(-1, n_dense) @ df).view_as(o)
        out[s0 : s0 + step] = o.to(q.dtype)
    return out


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Lightning-indexer scores: sum_h w[s,h] * relu(q[s,h] . k[t]). q [S,H,D], weights [S,H], keys [T,D].

    The products run in q's dtype (the model's), as the reference runs this einsum in BF16; FP32 out.
    """
    S, H, D = q.shape
    out = torch.empty(S, keys.shape[0], dtype=torch.float32, device=q.device)
    step = _rows_per_block(H * keys.shape[0])
    kt = keys.to(q.dtype).t()
    for s0 in range(0, S, step):  # blocks of queries bound the [s, H, T] intermediate
        qb = q[s0 : s0 + step]
        dots = (qb.reshape(-1, D) @ kt).view(qb.shape[0], H, -1).relu_()  # one GEMM for all heads
        w = weights[s0 : s0 + step].to(q.dtype).unsqueeze(1)
        out[s0 : s0 + step] = torch.bmm(w, dots).squeeze(1).float()
    return out


def hc_sinkhorn(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC weights from the mixing logits [T, (2+n)n]: pre [T,n], post [T,n], comb [T,n,n] (Sinkhorn)."""
    mix_pre, mix_post, mix_res = mixes.float().split([n, n, n * n], dim=-1)
    b_pre, b_post, b_res = base.float().split([n, n, n * n])
    pre = torch.sigmoid(scale[0] * mix_pre + b_pre) + eps
    post = 2.0 * torch.sigmoid(scale[1] * mix_post + b_post)
    comb = torch.softmax((scale[2] * mix_res + b_res).view(-1, n, n), dim=-1) + eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    return pre, post, comb


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, in float32 (weight float32), back to x's dtype.
    Without a weight (the query heads), x times the factor rounded to x's dtype, in x's dtype, as the reference."""
    if weight is None:
        return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (weight * xf).to(x.dtype)


def hc_pre(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int,
           eps: float, norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC's collapse of the n streams x [T, n, D] into one sublayer input: the mixing logits from the
    RMS-normalised flattened streams (fn [(2+n)n, nD] float32), their weights (`hc_sinkhorn`), and
    u = sum_j pre_j x_j. Returns (u [T, D] in x's dtype, post [T, n], comb [T, n, n])."""
    flat = x.flatten(1).float()
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    mixes = dense_linear(flat, fn) * rsqrt
    pre, post, comb = hc_sinkhorn(mixes, scale, base, n, iters, eps)
    u = (pre.unsqueeze(-1) * x.float()).sum(dim=1)
    return u.to(x.dtype), post, comb


def hc_post(o: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """mHC's expansion back to n streams: X'[k] = post_k * o + sum_j comb[j, k] X[j], in float32, in x's dtype.
    o [T, D] the sublayer's output, x [T, n, D] the streams before it."""
    wide = torch.promote_types(comb.dtype, torch.float32)  # float32; float64 for a float64 reference
    mixed = torch.einsum("tjk,tjd->tkd", comb.to(wide), x.to(wide))
    return (post.unsqueeze(-1) * o.to(wide).unsqueeze(1) + mixed).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved RoPE: the last 2 * cos.shape[-1] dims of x [T, ..., D] rotated by row t's angles (cos/sin
    float32 [T, dim/2]; `inverse` rotates back), in float32, back to x's dtype; the other dims as they are."""
    dim = 2 * cos.shape[-1]
    while cos.dim() < x.dim():
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if inverse:
        sin = -sin
    nope, rot = x[..., :-dim], x[..., -dim:].float()
    even, odd = rot[..., 0::2], rot[..., 1::2]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return torch.cat([nope, out.to(x.dtype)], dim=-1)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform (Sylvester order) over the last dim, a power of two."""
    d = x.shape[-1]
    y = x.float().reshape(-1, d)
    h = 1
    while h < d:
        y = y.view(-1, d // (2 * h), 2, h)
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack([a + b, a - b], dim=2)
        h *= 2
    return (y.reshape(x.shape) * d**-0.5).to(x.dtype)


def fp8_round(x: torch.Tensor, block: int, width: int | None = None) -> torch.Tensor:
    """x[..., :width] (default: all of it) rounded to e4m3 in blocks of `block` with UE8M0 scales (the
    reference's rounding of the KV entries' non-rope dims); x[..., width:] as it is."""
    if width is None or width == x.shape[-1]:
        return quant.fp8_round_blocks(x, block)
    return torch.cat([quant.fp8_round_blocks(x[..., :width], block), x[..., width:]], dim=-1)


def fp4_round(x: torch.Tensor, block: int = quant.FP4_BLOCK) -> torch.Tensor:
    """x rounded to e2m1 in blocks of `block` with UE8M0 scales (the indexer's queries and keys)."""
    return quant.fp4_round_blocks(x, block)
