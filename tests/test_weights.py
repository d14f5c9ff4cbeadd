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


def _error(folder: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    return e.value


def _load_error(folder: Path) -> str:
    return str(_error(folder))


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
    err = _error(broken)
    where = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    texts = sorted(str(p) for p in err.problems)
    assert texts == sorted([
        "missing tensor layers.2.attn.wq_a.scale (shape [1, 2])",
        f"{where['layers.1.attn.wkv.weight']}: layers.1.attn.wkv.weight: shape [64, 256], expected [128, 256]",
        f"{where['layers.0.attn.attn_sink']}: layers.0.attn.attn_sink: dtype I32, expected a float type",
        f"{where['layers.9.attn.wq_a.weight']}: unexpected tensor layers.9.attn.wq_a.weight",
    ])
    lines = str(err).splitlines()
    assert lines[0].endswith(": 4 problems:") and "closest to the official (deepseek-ai release) layout" in lines[0]
    assert lines[1:5] == [f"  - {p}" for p in sorted(err.problems, key=lambda p: (p.file is None, p.file or ""))]


def test_quantized_tensor_with_wrong_dtype(broken):
    def damage(t):
        if "layers.3.ffn.experts.1.w2.weight" in t:
            t["layers.3.ffn.experts.1.w2.weight"] = t["layers.3.ffn.experts.1.w2.weight"].view(torch.uint8)

    _edit(broken, damage)
    assert "layers.3.ffn.experts.1.w2.weight: dtype U8, expected I8" in _load_error(broken)
    assert len(_error(broken).problems) == 1


def test_truncated_shard_is_one_line_with_the_remedy(broken):
    shard = sorted(broken.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    err = _error(broken)
    assert [(p.file, p.kind) for p in err.problems] == [(shard.name, "file")]
    assert err.problems[0].text.startswith(f"truncated: {len(data) // 2:,} of {len(data):,} bytes present (")
    lines = str(err).splitlines()
    assert len(lines) == 3 and lines[1] == f"  - {err.problems[0]}" and len(lines[1]) < 120
    assert lines[2].startswith("The folder is incomplete or damaged: copy the files named above")


def test_a_pulled_model_is_told_to_pull_again(broken, tmp_path):
    snapshot = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-V4-Flash" / "snapshots" / "0123abc"
    shutil.copytree(broken, snapshot)
    shard = sorted(snapshot.glob("*.safetensors"))[2]
    shard.write_bytes(shard.read_bytes()[:5000])
    msg = _load_error(snapshot)
    assert msg.splitlines()[-1].startswith("Re-run `v4 pull deepseek-ai/DeepSeek-V4-Flash`: it resumes")


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
    err = _error(broken)
    # one line for the file: the tensors the index places in it are not listed one by one as missing
    assert [str(p) for p in err.problems] == [f"{victim.name}: missing (the index lists it)"]


def test_unindexed_corrupt_shard_does_not_list_its_tensors(broken):
    (broken / "model.safetensors.index.json").unlink()
    victim = sorted(broken.glob("*.safetensors"))[0]
    victim.write_bytes(b"\xff" * 64)
    texts = [str(p) for p in _error(broken).problems]
    assert len(texts) == 2 and texts[0].startswith(f"{victim.name}: header length")
    assert texts[1].endswith("of the model's tensors are not in the readable files (the damaged files listed "
                             "may hold them)")


def test_index_places_tensor_in_wrong_shard(broken):
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == shards[0])
    index["weight_map"][name] = shards[1]
    index_path.write_text(json.dumps(index))
    assert f"{shards[1]}: the index places {name} here, but the file does not hold it" in _load_error(broken)


def test_nan_scale_bytes_are_corrupt(broken):
    def damage(t):
        if "layers.4.attn.wo_b.scale" in t:
            s = t["layers.4.attn.wo_b.scale"].view(torch.uint8).clone()
            s[0, 0] = 255
            t["layers.4.attn.wo_b.scale"] = s.view(torch.float8_e8m0fnu)

    _edit(broken, damage)
    assert "layers.4.attn.wo_b.scale: holds NaN scale bytes" in _load_error(broken)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder") as e:
        load_model(tmp_path / "nope")
    assert [str(p) for p in e.value.problems] == [f"no checkpoint folder at {tmp_path / 'nope'}"]
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
