"""Every op behind the `ops` seam against a direct transcription of its formula."""

import math

import pytest
import torch

from v4cli.runtime import ops, ops_ref, quant


def test_seam_defaults_to_the_twins_and_can_be_swapped():
    assert all(ops.backend(n) == "torch" for n in ops.OP_NAMES)
    calls = []
    ops.register("hadamard", lambda x: calls.append(x) or ops_ref.hadamard(x))
    try:
        ops.hadamard(torch.ones(2, 4))
        assert len(calls) == 1 and ops.backend("hadamard") != "torch"
    finally:
        ops.reset()
    with pytest.raises(KeyError):
        ops.register("no_such_op", print)
    with pytest.raises(KeyError):
        ops.register("hadamard", print, device="tpu")


def test_seam_dispatches_on_the_tensors_device():
    """A kernel registered for one device never sees another device's tensors: those run the twin."""
    seen = []
    ops.register("hadamard", lambda x: seen.append("cuda") or ops_ref.hadamard(x), device="cuda")
    try:
        x = torch.randn(2, 8)
        assert torch.equal(ops.hadamard(x), ops_ref.hadamard(x)) and seen == []  # a CPU tensor: the twin
        assert ops.backend("hadamard", "cuda") != "torch" and ops.backend("hadamard") == "torch"
        meta = torch.empty(2, 8, device="meta")  # no kernel for "meta" either: the twin runs there
        assert ops.hadamard(meta).device.type == "meta" and seen == []
        ops.register("hadamard", lambda x: seen.append("cpu") or ops_ref.hadamard(x))
        ops.hadamard(x)
        assert seen == ["cpu"]
        ops.reset("cpu")  # one device back to the twins, the other kept
        assert ops.backend("hadamard") == "torch" and ops.backend("hadamard", "cuda") != "torch"
    finally:
        ops.reset()
    assert ops.backend("hadamard", "cuda") == "torch"


def test_sparse_attention_matches_per_head_loop():
    g = torch.Generator().manual_seed(0)
    S, H, D, T, K = 5, 3, 16, 12, 6
    q, kv, sink = torch.randn(S, H, D, generator=g), torch.randn(T, D, generator=g), torch.randn(H, generator=g)
    idx = torch.randint(0, T, (S, K), generator=g)
    idx[0, 2:] = -1
    idx[3, :] = -1  # a query with no candidates attends only to the sink: output 0
    out = ops.sparse_attention(q, kv, sink, idx, 0.25)
    for s in range(S):
        cand = [int(i) for i in idx[s] if i >= 0]
        for h in range(H):
            if not cand:
                assert out[s, h].abs().max() == 0
                continue
            logits = torch.stack([q[s, h] @ kv[c] * 0.25 for c in cand])
            m = max(logits.max(), sink[h])
            w = torch.exp(logits - m)
            want = (w[:, None] * kv[cand]).sum(0) / (w.sum() + torch.exp(sink[h] - m))
            assert torch.allclose(out[s, h], want, atol=1e-5)


def test_sparse_attention_dense_part_equals_gathering_it():
    g = torch.Generator().manual_seed(5)
    S, H, D, T, N = 7, 2, 16, 9, 5
    q, kv, dense = torch.randn(S, H, D, generator=g), torch.randn(T, D, generator=g), torch.randn(N, D, generator=g)
    sink, idx = torch.randn(H, generator=g), torch.randint(-1, T, (S, 4), generator=g)
    limit = torch.tensor([0, 1, 2, 3, 5, 5, 4])
    got = ops.sparse_attention(q, kv, sink, idx, 0.3, dense, limit)
    cols = torch.arange(N).expand(S, -1)
    full_idx = torch.cat([idx, torch.where(cols < limit[:, None], cols + T, -1)], dim=1)
    want = ops.sparse_attention(q, torch.cat([kv, dense]), sink, full_idx, 0.3)
    assert torch.allclose(got, want, atol=1e-5)


def test_indexer_scores_formula():
    g = torch.Generator().manual_seed(1)
    q, w, k = torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, generator=g), torch.randn(6, 8, generator=g)
    got = ops.indexer_scores(q, w, k)
    want = torch.zeros(4, 6)
    for s in range(4):
        for t in range(6):
            want[s, t] = sum(w[s, h] * max(0.0, float(q[s, h] @ k[t])) for h in range(3))
    assert torch.allclose(got, want, atol=1e-5)


def test_hadamard_is_the_sylvester_matrix():
    n = 16
    H = torch.ones(1, 1)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    x = torch.randn(3, n)
    assert torch.allclose(ops.hadamard(x), x @ H.t() / math.sqrt(n), atol=1e-6)
    assert torch.allclose(ops.hadamard(ops.hadamard(x)), x, atol=1e-6)


def test_hc_sinkhorn_formula():
    g = torch.Generator().manual_seed(2)
    n, eps = 4, 1e-6
    mixes, base, scale = torch.randn(3, 24, generator=g), torch.randn(24, generator=g), torch.rand(3, generator=g) + 0.5
    pre, post, comb = ops.hc_sinkhorn(mixes, scale, base, n, 20, eps)
    assert torch.allclose(pre, torch.sigmoid(scale[0] * mixes[:, :4] + base[:4]) + eps)
    assert torch.allclose(post, 2 * torch.sigmoid(scale[1] * mixes[:, 4:8] + base[4:8]))
    for t in range(3):
        c = torch.softmax((scale[2] * mixes[t, 8:] + base[8:]).view(4, 4), dim=-1) + eps
        c = c / (c.sum(0, keepdim=True) + eps)
        for _ in range(19):
            c = c / (c.sum(1, keepdim=True) + eps)
            c = c / (c.sum(0, keepdim=True) + eps)
        assert torch.allclose(comb[t], c, atol=1e-6)
    # close to doubly stochastic, not symmetric
    assert torch.allclose(comb.sum(-2), torch.ones(3, 4), atol=1e-4)
    assert torch.allclose(comb.sum(-1), torch.ones(3, 4), atol=1e-3)


@pytest.mark.parametrize("act", [False, True])
def test_fp8_and_fp4_linear(act):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(5, 256, generator=g), torch.randn(128, 256, generator=g) * 0.05
    q8, s8 = quant.quantize_fp8(w)
    xin = quant.act_quant(x) if act else x
    assert torch.allclose(ops.fp8_linear(x, q8, s8, act), xin @ quant.dequant_fp8(q8, s8).t(), atol=1e-5)
    q4, s4 = quant.quantize_fp4(w)
    assert torch.allclose(ops.fp4_linear(x, q4, s4, act), xin @ quant.dequant_fp4(q4, s4).t(), atol=1e-5)
    if act:  # the input rounding really happens
        assert not torch.allclose(ops.fp8_linear(x, q8, s8, True), ops.fp8_linear(x, q8, s8, False), atol=1e-6)
