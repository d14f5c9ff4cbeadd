"""Checkpoints as users have them on disk: the layout is recognised from the names, the storage from the dtypes.

The save_pretrained checkpoints are written by transformers itself, not by our writer, and our logits are
compared with transformers' on the very same files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from v4cli.runtime import CheckpointError, load_model
from v4cli.runtime.layouts import OFFICIAL, SAVE_PRETRAINED, TRANSFORMERS, recognise
from v4cli.runtime.quant import dequant_fp4, dequant_fp8
from v4cli.runtime.weights import read_checkpoint

transformers = pytest.importorskip("transformers")


def _names(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({k: s.get_slice(k).get_dtype() for k in s.keys()})  # noqa: SIM118 (not a dict)
    return out


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf_model(ckpt_dir):
    """transformers' DeepseekV4ForCausalLM, float32, loaded from a tiny checkpoint in its own names."""
    return transformers.DeepseekV4ForCausalLM.from_pretrained(ckpt_dir("flash", "hf"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def saved(hf_model, tmp_path_factory) -> dict[str, Path]:
    """What save_pretrained writes: after from_pretrained (as after a fine-tune), from a model built from its
    config (as after training one; transformers reverses its renaming differently then), and in BF16."""
    root = tmp_path_factory.mktemp("saved")
    hf_model.save_pretrained(root / "loaded")
    built = transformers.DeepseekV4ForCausalLM(hf_model.config)
    built.load_state_dict(hf_model.state_dict())
    built.save_pretrained(root / "built")
    built.to(torch.bfloat16).save_pretrained(root / "bf16")
    return {k: root / k for k in ("loaded", "built", "bf16")}


def _reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    ref = transformers.DeepseekV4ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(ids[None]).logits[0]


@pytest.mark.parametrize("kind", ["loaded", "built", "bf16"])
def test_save_pretrained_checkpoint_matches_transformers(saved, kind):
    folder = saved[kind]
    names = _names(folder)
    # really the mixed layout of the issue: official names under `model.`, un-fused experts, transformers' leftovers
    assert "model.layers.0.attn.wq_a.weight" in names and "model.layers.0.ffn.experts.7.w2.weight" in names
    assert "model.layers.0.attn.norm.weight" in names and "model.embed_tokens.weight" in names
    assert ("head.weight" if kind != "loaded" else "lm_head.weight") in names
    assert not any(n.startswith("mtp.") for n in names)
    assert set(names.values()) == ({"BF16", "I64"} if kind == "bf16" else {"F32", "I64"})
    r = read_checkpoint(folder)
    assert r.layout is SAVE_PRETRAINED and not r.problems and r.expert_fmt == "float" and r.dense_fmt == "float"

    ours = load_model(folder, simulate_quant=False)
    assert len(ours.mtp) == 0  # transformers does not keep the MTP block: the model runs without it
    ids = _ids(70, seed=11)  # past the window (8), 17 CSA entries against index_topk 4
    got, want = ours.logits(ids), _reference_logits(folder, ids)
    assert got.shape == want.shape == (70, 1024)
    assert (got - want).abs().max().item() <= 1e-3


def test_recognised_from_the_names(ckpt_dir, saved):
    cases = {OFFICIAL: ckpt_dir("flash"), TRANSFORMERS: ckpt_dir("flash", "hf"), SAVE_PRETRAINED: saved["built"]}
    for layout, folder in cases.items():
        best, *others = recognise(_names(folder))
        assert best.layout is layout and not best.unknown, (layout, best.unknown[:5])
        assert all(o.recognised < best.recognised for o in others)


def _float_export(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """The official names with every FP8/FP4 weight dequantized and its scale dropped; config.json (still
    saying FP8) and the index copied unchanged but for the names."""
    dst.mkdir()
    shutil.copyfile(src / "config.json", dst / "config.json")
    weight_map, scales = {}, {}
    for f in sorted(src.glob("*.safetensors")):  # a weight's scale may sit in another shard
        with safe_open(str(f), "pt") as s:
            scales.update({k: s.get_tensor(k) for k in s.keys() if k.endswith(".scale")})  # noqa: SIM118
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            t = {k: s.get_tensor(k) for k in s.keys()}  # noqa: SIM118 (not a dict)
        out = {}
        for name, v in t.items():
            scale = scales.get(name.removesuffix(".weight") + ".scale") if name.endswith(".weight") else None
            if name.endswith(".scale"):
                continue
            if scale is not None:
                v = (dequant_fp4 if v.dtype == torch.int8 else dequant_fp8)(v, scale).to(dtype)
            out[name] = v.contiguous()
        save_file(out, str(dst / f.name))
        weight_map.update(dict.fromkeys(out, f.name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_float_reexport_of_the_official_checkpoint(ckpt_dir, tmp_path, dtype):
    src = ckpt_dir("pro")
    _float_export(src, tmp_path / "f", dtype)
    r = read_checkpoint(tmp_path / "f")
    assert r.layout is OFFICIAL and not r.problems
    assert (r.dense_fmt, r.expert_fmt) == ("float", "float") and not r.args.fp8_weights
    q, f = load_model(src, simulate_quant=False), load_model(tmp_path / "f", simulate_quant=False)
    assert f.layers[0].attn.wq_a.fmt == "float" and len(f.mtp) == 1
    ids = _ids(40, seed=2)
    assert (q.logits(ids) - f.logits(ids)).abs().max().item() <= 1e-4  # FP8/FP4 dequantize exactly to BF16


def test_a_checkpoint_that_matches_no_layout_names_the_closest(saved, tmp_path):
    dst = tmp_path / "edited"
    shutil.copytree(saved["built"], dst)
    with safe_open(str(dst / "model.safetensors"), "pt") as s:
        t = {k: s.get_tensor(k) for k in s.keys() if not k.startswith("model.layers.3.")}  # noqa: SIM118
    t["model.layers.0.attn.wq_a.lora"] = torch.zeros(2)
    save_file(t, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_model(dst)
    err = e.value
    assert "closest to the transformers save_pretrained layout" in str(err)
    texts = [str(p) for p in err.problems]
    assert "model.safetensors: unexpected tensor model.layers.0.attn.wq_a.lora" in texts
    assert any(p.startswith("missing tensor model.layers.3.attn.wq_a.weight") for p in texts)
    assert any(p.startswith("missing tensor model.layers.3.ffn.experts.0.w1.weight") for p in texts)
    # every problem is one line of the message, and the message ends with what to do
    lines = str(err).splitlines()
    assert len(lines) == 2 + len(texts) and lines[-1].startswith("Its tensors do not fit its config.json")
