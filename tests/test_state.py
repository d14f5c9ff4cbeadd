"""The decode state lets the model continue from any position: chunks and single tokens equal one pass."""

import pytest
import torch

from v4cli.runtime import SeqState, load_model


def _run(model, ids, chunks):
    st = SeqState.new(model.args)
    outs, pos = [], 0
    with torch.inference_mode():
        for n in chunks:
            outs.append(model.head_logits(model(ids[pos : pos + n], [st], [n])))
            pos += n
    assert st.pos == pos
    return torch.cat(outs), st


@pytest.fixture(scope="module")
def model(ckpt_dir):
    # index_topk above the number of CSA entries: top-k then keeps every closed entry, free of ties.
    return load_model(ckpt_dir("flash", index_topk=128), simulate_quant=False)


def test_prefill_then_decode_crossing_csa_and_hca_boundaries(model):
    ids = torch.randint(0, 1024, (262,), generator=torch.Generator().manual_seed(0))
    full = model.logits(ids)
    got, st = _run(model, ids, [250] + [1] * 12)  # decode crosses (p+1)%4==0 and p+1 == 256
    assert (got - full).abs().max().item() < 1e-4
    assert st.layers[3].comp.entries.n == 2  # the second HCA entry closed during decode


def test_decode_with_real_top_k_selection(ckpt_dir):
    # index_topk=4 against ~65 closed entries: the indexer really selects (16 heads keep it free of ties).
    model = load_model(ckpt_dir("flash"), simulate_quant=False)
    ids = torch.randint(0, 1024, (262,), generator=torch.Generator().manual_seed(0))
    got, _ = _run(model, ids, [250] + [1] * 12)
    assert (got - model.logits(ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("chunk", [1, 3, 64, 300])
def test_chunked_prefill_equals_one_shot(model, chunk):
    ids = torch.randint(0, 1024, (300,), generator=torch.Generator().manual_seed(1))
    full = model.logits(ids)
    sizes = [chunk] * (300 // chunk) + ([300 % chunk] if 300 % chunk else [])
    got, _ = _run(model, ids, sizes)
    assert (got - full).abs().max().item() < 1e-4


def test_batch_of_different_lengths_equals_each_alone(model):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 1024, (37,), generator=g), torch.randint(0, 1024, (130,), generator=g)
    sa, sb = SeqState.new(model.args), SeqState.new(model.args)
    with torch.inference_mode():
        both = model.head_logits(model(torch.cat([a, b]), [sa, sb], [37, 130]))
    assert (both[:37] - model.logits(a)).abs().max().item() < 1e-4
    assert (both[37:] - model.logits(b)).abs().max().item() < 1e-4


def test_snapshot_restore_continue(model):
    ids = torch.randint(0, 1024, (140,), generator=torch.Generator().manual_seed(3))
    st = SeqState.new(model.args)
    with torch.inference_mode():
        model(ids[:100], [st], [100])
        snap = st.snapshot()
        ref = model.head_logits(model(ids[100:], [st], [40]))
        again = model.head_logits(model(ids[100:], [snap], [40]))
    assert torch.equal(ref, again)
    assert (ref - model.logits(ids)[100:]).abs().max().item() < 1e-4


def test_mark_and_rollback_undo_a_verify_step(model):
    ids = torch.randint(0, 1024, (140,), generator=torch.Generator().manual_seed(5))
    st = SeqState.new(model.args)
    with torch.inference_mode():
        model(ids[:126], [st], [126])  # the next 4 tokens close a CSA entry (p=127) and wrap the ring
        mark = st.mark(4)
        model(torch.tensor([7, 8, 9, 10]), [st], [4])
        st.rollback(mark)
        assert st.pos == 126 and st.layers[2].comp.entries.n == 126 // 4
        got = model.head_logits(model(ids[126:], [st], [14]))
    assert (got - model.logits(ids)[126:]).abs().max().item() < 1e-4


def test_mtp_chunked_equals_one_shot(model):
    ids = torch.randint(0, 1024, (60,), generator=torch.Generator().manual_seed(4))
    st = SeqState.new(model.args)
    with torch.inference_mode():
        h = model(ids, [st], [60])
        full, _ = model.mtp_forward(h[:-1], ids[1:], [st], [59])
        st2 = SeqState.new(model.args)
        part1, _ = model.mtp_forward(h[:30], ids[1:31], [st2], [30])
        part2, _ = model.mtp_forward(h[30:-1], ids[31:], [st2], [29])
    assert st.mtp_pos == 59 and st2.mtp_pos == 59
    assert full.shape == (59, 1024)
    assert (torch.cat([part1, part2]) - full).abs().max().item() < 1e-4
    # MTP logits differ from the main head's: a separate block with its own weights
    assert (full - model.head_logits(h[:-1])).abs().max().item() > 0.1


def test_reserve_keeps_entry_buffers_within_the_plan(model):
    # Without a reservation the 1.25x growth leaves up to a quarter unused; with one, buffers stop at
    # what prompt + max_tokens produce, and a verify step past it still fits (the cap is soft).
    ids = torch.randint(0, 1024, (1100,), generator=torch.Generator().manual_seed(6))
    free, held = SeqState.new(model.args), SeqState.new(model.args)
    held.reserve(model.args, 1000)
    with torch.inference_mode():
        for st in (free, held):
            for s0 in range(0, 1000, 8):
                model(ids[s0 : s0 + 8], [st], [8])
    csa = [st.layers[2].comp.entries for st in (free, held)] + [st.layers[2].index.entries for st in (free, held)]
    assert all(r.n == 250 for r in csa)
    assert csa[0].capacity > 250 and csa[2].capacity > 250  # 64 -> 80 -> 100 -> 125 -> 156 -> 195 -> 243 -> 303
    assert csa[1].capacity == 250 and csa[3].capacity == 250
    assert held.layers[3].comp.entries.capacity <= max(64, 1000 // 128)
    snap = held.snapshot()
    with torch.inference_mode():
        model(ids[1000:1100], [snap], [100])  # past the reservation: grows exactly as needed
    assert snap.layers[2].comp.entries.n == snap.layers[2].comp.entries.capacity == 275
