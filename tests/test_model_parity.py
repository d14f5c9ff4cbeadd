"""Our forward pass against transformers' DeepseekV4ForCausalLM (float32, simulate_quant=False)."""

import pytest
import torch

from v4cli.runtime import load_model

transformers = pytest.importorskip("transformers")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pattern", ["flash", "pro", "hash"])
@pytest.mark.parametrize("length", [263, 301])
def test_logits_match_transformers(ckpt_dir, pattern, length):
    # 263 and 301 are not multiples of 4 or 128, are longer than the window (8), give 2 HCA entries and
    # 65-75 CSA entries against index_topk=4; 16 indexer heads keep top-k free of ties.
    ours = load_model(ckpt_dir(pattern), simulate_quant=False)
    hf = transformers.DeepseekV4ForCausalLM.from_pretrained(ckpt_dir(pattern, "hf"), dtype=torch.float32)
    hf.eval()
    ids = _ids(length, seed=length)
    with torch.no_grad():
        want = hf(ids[None]).logits[0]
    got = ours.logits(ids)
    assert got.shape == (length, 1024)
    assert (got - want).abs().max().item() <= 1e-4


def test_logits_match_transformers_with_whole_tile_output_groups(ckpt_dir):
    # o_lora_rank 128: each output group's rows of wo_a are whole FP8 scale tiles, as in the real models,
    # so the grouped output projection runs group by group through ops.fp8_linear.
    ours = load_model(ckpt_dir("flash", o_lora_rank=128), simulate_quant=False)
    hf = transformers.DeepseekV4ForCausalLM.from_pretrained(ckpt_dir("flash", "hf", o_lora_rank=128),
                                                            dtype=torch.float32)
    ids = _ids(150, seed=7)
    with torch.no_grad():
        want = hf(ids[None]).logits[0]
    assert (ours.logits(ids) - want).abs().max().item() <= 1e-4


def test_official_and_transformers_layouts_give_identical_logits(ckpt_dir):
    a = load_model(ckpt_dir("pro"), simulate_quant=False)
    b = load_model(ckpt_dir("pro", "hf"), simulate_quant=False)
    ids = _ids(140, seed=3)
    assert torch.equal(a.logits(ids), b.logits(ids))


def test_logits_accepts_lists_and_tensors(ckpt_dir):
    m = load_model(ckpt_dir("flash"), simulate_quant=False)
    ids = _ids(20, seed=4)
    assert torch.equal(m.logits(ids.tolist()), m.logits(ids))


def test_quantized_checkpoint_is_close_to_the_float_one(ckpt_dir):
    # Same random floats; one checkpoint stores FP8 weights + FP4 experts, the other BF16 everywhere.
    q = load_model(ckpt_dir("flash"), simulate_quant=False)
    f = load_model(ckpt_dir("flash", quantization_config=None, expert_dtype=None), simulate_quant=False)
    assert q.layers[2].ffn.experts[0].w1.fmt == "fp4" and f.layers[2].ffn.experts[0].w1.fmt == "float"
    ids = _ids(200, seed=5)
    lq, lf = q.logits(ids), f.logits(ids)
    # Measured on this config (random weights amplify rounding): mean |dlogit| 0.29, max 3.5, mean cosine
    # 0.925 (FP8 alone: 0.16 / 2.9 / 0.970). An unrelated model scores mean 1.14 and cosine ~0.
    assert (lq - lf).abs().mean().item() < 0.45
    assert torch.nn.functional.cosine_similarity(lq, lf, dim=-1).mean().item() > 0.85
