"""Loading checks every tensor and reports every problem; nothing half-loaded is returned."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from v4cli.runtime import CheckpointError, load_model
from v4cli.runtime.weights import official_to_hf


@pytest.fixture
def broken(ckpt_dir, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir("flash"), dst)
    return dst


def _edit(folder: Path, fn) -> None:
    """Apply fn(dict of tensors) to every shard, keeping the index in step."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(shard))
        fn(tensors)
        save_file(tensors, str(shard))
        for name in list(index["weight_map"]):
            if index["weight_map"][name] == shard.name and name not in tensors:
                del index["weight_map"][name]
        for name in tensors:
            index["weight_map"].setdefault(name, shard.name)
    index_path.write_text(json.dumps(index))


def _load_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    return str(e.value)


def test_every_problem_is_listed_at_once(broken):
    def damage(t):
        t.pop("layers.2.attn.wq_a.scale", None)
        if "layers.1.attn.wkv.weight" in t:
            t["layers.1.attn.wkv.weight"] = t["layers.1.attn.wkv.weight"][:64].contiguous()
        if "layers.0.attn.attn_sink" in t:
            t["layers.0.attn.attn_sink"] = torch.zeros(4, dtype=torch.int32)
        if "embed.weight" in t:
            t["layers.9.attn.wq_a.weight"] = torch.zeros(2, 2)

    _edit(broken, damage)
    msg = _load_error(broken)
    assert "4 problem(s)" in msg
    assert "missing tensor layers.2.attn.wq_a.scale" in msg
    assert "layers.1.attn.wkv.weight: shape [64, 256], expected [128, 256]" in msg
    assert "layers.0.attn.attn_sink: dtype I32, expected a float type" in msg
    assert "unexpected tensor layers.9.attn.wq_a.weight" in msg


def test_quantized_tensor_with_wrong_dtype(broken):
    def damage(t):
        if "layers.3.ffn.experts.1.w2.weight" in t:
            t["layers.3.ffn.experts.1.w2.weight"] = t["layers.3.ffn.experts.1.w2.weight"].view(torch.uint8)

    _edit(broken, damage)
    assert "layers.3.ffn.experts.1.w2.weight: dtype U8, expected I8" in _load_error(broken)


def test_truncated_shard(broken):
    shard = sorted(broken.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    msg = _load_error(broken)
    assert shard.name in msg and "truncated" in msg


def test_corrupt_header(broken):
    shard = sorted(broken.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:20] = b"\x00garbage!!\xff\xfe"
    shard.write_bytes(bytes(data))
    msg = _load_error(broken)
    assert shard.name in msg and "not valid JSON" in msg


def test_index_points_at_missing_shard(broken):
    victim = sorted(broken.glob("*.safetensors"))[2]
    victim.unlink()
    msg = _load_error(broken)
    assert f"the index points at {victim.name}, which is missing" in msg


def test_index_places_tensor_in_wrong_shard(broken):
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == shards[0])
    index["weight_map"][name] = shards[1]
    index_path.write_text(json.dumps(index))
    assert f"the index places {name} in {shards[1]}, which does not hold it" in _load_error(broken)


def test_nan_scale_bytes_are_corrupt(broken):
    def damage(t):
        if "layers.4.attn.wo_b.scale" in t:
            s = t["layers.4.attn.wo_b.scale"].view(torch.uint8).clone()
            s[0, 0] = 255
            t["layers.4.attn.wo_b.scale"] = s.view(torch.float8_e8m0fnu)

    _edit(broken, damage)
    assert "layers.4.attn.wo_b.scale: holds NaN scale bytes" in _load_error(broken)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "x")


def test_no_shards(broken):
    for f in broken.glob("*.safetensors"):
        f.unlink()
    (broken / "model.safetensors.index.json").unlink()
    assert "no *.safetensors files" in _load_error(broken)


def test_loaded_weights_stay_in_stored_precision(ckpt_dir):
    m = load_model(ckpt_dir("flash"), dtype=torch.bfloat16)
    assert m.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn
    assert m.layers[0].attn.wq_a.scale.dtype == torch.float8_e8m0fnu
    assert m.layers[0].ffn.experts[3].w2.weight.dtype == torch.int8
    assert m.layers[0].ffn.gate.tid2eid.dtype == torch.long
    assert m.embed.weight.dtype == torch.bfloat16 and m.head.weight.dtype == torch.bfloat16
    assert not any(b.is_meta for b in m.buffers())
    assert m.logits([1, 2, 3]).dtype == torch.float32
    # a float32 model does not widen them either: a row per token, and the head sums in FP32 anyway
    wide = load_model(ckpt_dir("flash"), dtype=torch.float32)
    assert wide.embed.weight.dtype == torch.bfloat16 and wide.head.weight.dtype == torch.bfloat16
    assert wide.layers[0].attn_norm.weight.dtype == torch.float32


def test_a_float32_export_keeps_its_float32_head(ckpt_dir, tmp_path):
    from v4cli.runtime.tiny import random_tensors, root_config, tiny_args, write_shards

    args = tiny_args("flash")
    tensors = random_tensors(args, seed=0)
    tensors["head.weight"] = tensors["head.weight"].float() + 1e-4  # values BF16 cannot hold
    write_shards(tmp_path, tensors, 2)
    (tmp_path / "config.json").write_text(__import__("json").dumps(root_config(args)))
    m = load_model(tmp_path, dtype=torch.bfloat16)
    assert m.head.weight.dtype == torch.float32 and torch.equal(m.head.weight, tensors["head.weight"])
    assert m.embed.weight.dtype == torch.bfloat16


def test_name_table_matches_transformers_names():
    assert official_to_hf("layers.7.attn.indexer.compressor.ape") == (
        "model.layers.7.self_attn.compressor.indexer.position_bias")
    assert official_to_hf("layers.0.hc_ffn_scale") == "model.layers.0.ffn_hc.scale"
    assert official_to_hf("layers.0.attn.wo_b.scale") == "model.layers.0.self_attn.o_b_proj.weight_scale_inv"
    assert official_to_hf("layers.2.ffn.gate.bias") == "model.layers.2.mlp.gate.e_score_correction_bias"
    assert official_to_hf("hc_head_fn") == "model.hc_head.hc_fn"
