"""The reference's quantisation-aware rounding, checked layer by layer on what the model stores."""

import pytest
import torch

from v4cli.runtime import SeqState, load_model, ops, quant


def _is_fp8_blocked(x: torch.Tensor, block: int) -> bool:
    return torch.equal(quant.fp8_round_blocks(x, block), x)


def _is_fp4_blocked(x: torch.Tensor) -> bool:
    return torch.equal(quant.fp4_round_blocks(x), x)


@pytest.fixture(scope="module")
def states(ckpt_dir):
    out = {}
    for sim in (True, False):
        m = load_model(ckpt_dir("flash"), simulate_quant=sim)
        st = SeqState.new(m.args)
        with torch.inference_mode():
            m(torch.arange(150) % 1024, [st], [150])
        out[sim] = (m, st)
    return out


def test_window_kv_nope_dims_are_fp8_and_rope_dims_untouched(states):
    m, st = states[True]
    nope = m.args.head_dim - m.args.qk_rope_head_dim
    for i, layer in enumerate(st.layers):
        ring = layer.ring
        assert _is_fp8_blocked(ring[:, :nope], 64), f"layer {i}"
        assert not _is_fp8_blocked(ring[:, nope:], 64)  # the 64 rope dims stay unrounded
    _, plain = states[False]
    assert not _is_fp8_blocked(plain.layers[0].ring[:, :nope], 64)


def test_compressed_entries_fp8_and_indexer_keys_fp4_after_hadamard(states):
    m, st = states[True]
    nope = m.args.head_dim - m.args.qk_rope_head_dim
    csa, hca = st.layers[2], st.layers[3]
    assert csa.comp.entries.n == 150 // 4 and hca.comp.entries.n == 150 // 128
    for entries in (csa.comp.entries.view(), hca.comp.entries.view()):
        assert _is_fp8_blocked(entries[:, :nope], 64)
    keys = csa.index.entries.view()
    assert _is_fp4_blocked(keys)
    # the stored keys are rotated: undoing the rotation does not give FP4-grid values
    assert not _is_fp4_blocked(ops.hadamard(keys))
    _, plain = states[False]
    assert not _is_fp4_blocked(plain.layers[2].index.entries.view())


def test_gemm_inputs_are_rounded_only_with_simulation(states):
    m_sim, _ = states[True]
    m_plain, _ = states[False]
    x = torch.randn(3, m_sim.args.hidden_size)
    lin_sim, lin_plain = m_sim.layers[0].attn.wq_a, m_plain.layers[0].attn.wq_a
    assert lin_sim.act_quant and not lin_plain.act_quant
    want = quant.act_quant(x) @ lin_sim.dense().t()
    assert torch.allclose(lin_sim(x), want, atol=1e-5)
    assert torch.allclose(lin_plain(x), x @ lin_plain.dense().t(), atol=1e-5)
