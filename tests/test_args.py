import json

import pytest

from v4cli.runtime.args import ConfigError, ModelArgs
from v4cli.runtime.tiny import hf_config, root_config, tiny_args

FLASH_ROOT = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "hidden_size": 4096,
    "num_hidden_layers": 43, "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
    "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024, "vocab_size": 129280,
    "n_routed_experts": 256, "num_experts_per_tok": 6, "n_shared_experts": 1, "moe_intermediate_size": 2048,
    "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc", "norm_topk_prob": True,
    "routed_scaling_factor": 1.5, "num_hash_layers": 3, "swiglu_limit": 10.0, "sliding_window": 128,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "index_n_heads": 64, "index_head_dim": 128,
    "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "compress_rope_theta": 160000,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                     "beta_fast": 32, "beta_slow": 1},
    "max_position_embeddings": 1048576, "num_nextn_predict_layers": 1, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "attention_bias": False,
    "torch_dtype": "bfloat16", "expert_dtype": "fp4",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
}


def test_official_flash_config_reads_every_key():
    a = ModelArgs.from_dict(FLASH_ROOT)
    assert (a.hidden_size, a.num_hidden_layers, a.o_groups, a.index_topk) == (4096, 43, 8, 512)
    assert a.compress_ratios.count(4) == 21 and a.compress_ratios.count(128) == 20
    assert a.fp8_weights and a.fp4_experts
    assert a.yarn == {"factor": 16.0, "original_seq_len": 65536, "beta_fast": 32.0, "beta_slow": 1.0}


def test_unknown_keys_are_ignored():
    a = ModelArgs.from_dict({**FLASH_ROOT, "some_future_key": [1, 2, 3]})
    assert a.hidden_size == 4096


def test_transformers_config_maps_to_the_same_args():
    a = tiny_args("pro")
    b = ModelArgs.from_dict(json.loads(json.dumps(hf_config(a))))
    assert b.compress_ratios == a.compress_ratios
    assert b.num_hash_layers == a.num_hash_layers
    assert (b.rope_theta, b.compress_rope_theta, b.qk_rope_head_dim) == (a.rope_theta, a.compress_rope_theta, 64)
    assert b.yarn == a.yarn


def test_root_config_round_trips():
    a = tiny_args("hash")
    assert ModelArgs.from_dict(root_config(a)) == a


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"compress_ratios": [0, 4, 0]}, "compress_ratios"),
        ({"num_attention_heads": 6}, "o_groups"),
        ({"compress_ratios": [0] * 43 + [4]}, "MTP"),
        ({"index_head_dim": 96}, "index_head_dim"),
        ({"n_shared_experts": 2}, "n_shared_experts"),
        ({"hidden_size": "big"}, "hidden_size"),
        ({"num_hash_layers": 50}, "num_hash_layers"),
        ({"scoring_func": "relu"}, "scoring_func"),
    ],
)
def test_inconsistent_config_names_the_key(change, key):
    with pytest.raises(ConfigError) as e:
        ModelArgs.from_dict({**FLASH_ROOT, **change})
    assert key in str(e.value)


def test_layer_types_must_be_known():
    cfg = hf_config(tiny_args("flash"))
    cfg["layer_types"][1] = "global_attention"
    with pytest.raises(ConfigError, match=r"layer_types\[1\]"):
        ModelArgs.from_dict(cfg)


def test_bad_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelArgs.from_file(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelArgs.from_file(tmp_path / "nowhere")
