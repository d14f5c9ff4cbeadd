"""Memory plan: weight bytes equal the built model's, decode state reproduces architecture.md §3.3, refusals."""

import re
from decimal import ROUND_HALF_UP, Decimal

import pytest
import torch

from v4cli.runtime import Engine, ModelArgs
from v4cli.runtime.cache import SeqState
from v4cli.runtime.model import Transformer
from v4cli.runtime.plan import (
    GiB,
    MemoryPlanError,
    entry_counts,
    partial_bytes,
    plan,
    state_bytes,
    weight_bytes,
)
from v4cli.runtime.tiny import FP8_CONFIG, tiny_args, write_checkpoint
from v4cli.runtime.weights import load_model

COMMON = dict(vocab_size=129280, quantization_config=dict(FP8_CONFIG), expert_dtype="fp4")
FLASH = ModelArgs.from_dict(dict(
    COMMON, hidden_size=4096, num_hidden_layers=43, num_attention_heads=64, q_lora_rank=1024, o_groups=8,
    n_routed_experts=256, moe_intermediate_size=2048, compress_ratios=[0, 0] + [4, 128] * 20 + [4, 0],
    index_topk=512, routed_scaling_factor=1.5))
PRO = ModelArgs.from_dict(dict(
    COMMON, hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, o_groups=16,
    n_routed_experts=384, moe_intermediate_size=3072, compress_ratios=[128, 128] + [4, 128] * 29 + [4, 0],
    index_topk=1024, routed_scaling_factor=2.5))
M = 2**20


def _meta_bytes(args: ModelArgs, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        m = Transformer(args, simulate_quant=False, dtype=dtype)
    return sum(b.numel() * b.element_size() for b in m.buffers())


@pytest.mark.parametrize("pattern", ["flash", "pro", "hash"])
@pytest.mark.parametrize("over", [{}, {"expert_dtype": None}, {"quantization_config": None, "expert_dtype": None},
                                  {"hc_mult": 2, "o_groups": 4, "index_head_dim": 64, "num_nextn_predict_layers": 0}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_bytes_equal_the_meta_model(pattern, over, dtype):
    if over.get("num_nextn_predict_layers") == 0:
        over = dict(over, compress_ratios=tiny_args(pattern).compress_ratios[:-1])
    args = tiny_args(pattern, **over)
    assert weight_bytes(args, dtype.itemsize) == _meta_bytes(args, dtype)


def test_weight_bytes_follow_the_on_disk_expert_format():
    args = tiny_args("flash")
    with torch.device("meta"):
        m = Transformer(args, simulate_quant=False, dtype=torch.bfloat16, expert_fmt="float")
    assert weight_bytes(args, 2, expert_fmt="float") == sum(b.numel() * b.element_size() for b in m.buffers())


def _widened(a: ModelArgs) -> int:
    """Elements stored BF16 on disk that our model holds in FP32: the norms. The head, embedding, compressor
    wkv/wgate and gate.weight stay BF16 as stored (their products widen them exactly), the indexer's
    weights_proj in the model dtype, as in the reference."""
    D, n = a.hidden_size, a.num_hidden_layers + a.num_nextn_predict_layers
    count = D + n * (2 * D + a.q_lora_rank + a.head_dim) + 3 * D
    for r in a.compress_ratios:
        if r:
            count += a.head_dim
        if r == 4:
            count += a.index_head_dim
    return count


def test_flash_weights_match_the_real_checkpoint_size():
    # In memory (BF16 model dtype) we hold the norms (listed in _widened) in FP32 instead of BF16: 2 B more each
    # (about 1 MiB for Flash). Without that the layout is the checkpoint's byte for byte, so the sum equals
    # §4.1's total_size exactly.
    ours = weight_bytes(FLASH, 2)
    assert ours - 2 * _widened(FLASH) == 159_609_485_896
    assert 0.5 * 2**20 < ours - 159_609_485_896 < 2 * 2**20
    # Pro: §4.1 says "about 805 GiB" on disk.
    assert round((weight_bytes(PRO, 2) - 2 * _widened(PRO)) / GiB) == 805


def _spec_round(x: float) -> str:
    """§3.3's rounding: to 3 decimals, then to 2, half up (see plan.py's docstring)."""
    three = Decimal(x).quantize(Decimal("0.001"), ROUND_HALF_UP)
    return str(three.quantize(Decimal("0.01"), ROUND_HALF_UP))


@pytest.mark.parametrize("args, counts, gib, per_token", [
    (FLASH, (5_674_368, 5_505_024), ("6.72", "3.76", "3.44"), (6885, 3853)),
    (PRO, (8_126_080, 7_864_320), ("9.63", "5.39", "4.92"), (9856, 5516)),
])
def test_state_reproduces_section_3_3(args, counts, gib, per_token):
    assert entry_counts(args, M, mtp=False) == counts
    sizes = [state_bytes(args, M, f, mtp=False, partial=False) for f in ("reference", "fp8", "mxfp4-indexer")]
    assert tuple(_spec_round(b / GiB) for b in sizes) == gib
    assert (round(sizes[0] / M), round(sizes[1] / M)) == per_token


def test_state_counts_mtp_ring_and_compressor_rows_beyond_section_3_3():
    for args, partial_mib in ((FLASH, 11.640625), (PRO, 17.84375)):  # §3.3 says 11.6 and 17.9 MiB
        assert entry_counts(args, M) == (entry_counts(args, M, mtp=False)[0] + 128, entry_counts(args, M)[1])
        assert partial_bytes(args, "reference") == partial_mib * 2**20
        full, bare = state_bytes(args, M, "reference"), state_bytes(args, M, "reference", mtp=False, partial=False)
        assert full - bare == 128 * 1024 + partial_mib * 2**20
    assert state_bytes(FLASH, M, "ours", dtype_bytes=2, mtp=False, partial=False) == \
        state_bytes(FLASH, M, "reference", mtp=False, partial=False)
    with pytest.raises(ValueError, match="unknown decode-state format"):
        state_bytes(FLASH, M, "int3")


@torch.inference_mode()
def test_ours_is_what_seqstate_holds(ckpt_dir):
    model = load_model(ckpt_dir("flash"), dtype=torch.float32, simulate_quant=False)
    args = model.args
    for n in (255, 200):  # 255 leaves the most open compressor rows for both m = 4 and m = 128; 200 fewer
        state = SeqState.new(args, torch.float32)
        model(torch.arange(n) % args.vocab_size, [state], [n])
        bound = state_bytes(args, n, "ours", dtype_bytes=4)
        if n == 255:
            assert state.nbytes() == bound
        else:
            assert bound - partial_bytes(args, "ours") < state.nbytes() < bound


def test_refusal_names_the_numbers_and_a_context_that_fits():
    want = plan(FLASH, M, 4, available=10**15)
    avail = want.weights + want.state_per_seq * 4 // 3  # room for about 1.3 sequences at 1M
    p = plan(FLASH, M, 4, available=avail)
    with pytest.raises(MemoryPlanError) as e:
        p.check()
    msg = str(e.value)
    assert f"{p.total / GiB:.2f} GiB" in msg and f"{avail / GiB:.2f} GiB is available" in msg
    ctx = int(re.search(r"context of ([\d,]+) tokens at batch 4", msg).group(1).replace(",", ""))
    assert ctx == p.max_context() and ctx % 1024 == 0 and 0 < ctx < M
    assert plan(FLASH, ctx, 4, available=avail).check().headroom >= 0
    with pytest.raises(MemoryPlanError):
        plan(FLASH, ctx + 1024, 4, available=avail).check()
    assert "batch 1 at 1,048,576 tokens" in msg and p.max_batch() == 1
    assert "memory plan: 4 x 1,048,576 tokens" in p.describe() and "per sequence" in p.describe()


def test_refusal_when_the_weights_alone_do_not_fit():
    p = plan(PRO, 4096, 1, available=500 * GiB)
    with pytest.raises(MemoryPlanError, match="even the weights alone do not fit"):
        p.check()
    assert p.headroom < 0 and p.total == p.weights + p.state_per_seq


def test_engine_refuses_before_loading(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path, tiny_args("flash"))
    loaded = []
    monkeypatch.setattr("v4cli.runtime.engine.load_model", lambda *a, **k: loaded.append(1))
    with pytest.raises(MemoryPlanError, match="does not fit"):
        Engine.from_pretrained(ckpt, max_context=4096, max_batch=2, available=1 << 20)
    assert loaded == []


def test_engine_keeps_its_plan(ckpt_dir):
    eng = Engine.from_pretrained(ckpt_dir("flash"), max_context=4096, max_batch=2, available=1 << 34)
    expect = plan(eng.args, 4096, 2, dtype_bytes=2, available=1 << 34).describe()
    assert eng.memory_plan == expect
