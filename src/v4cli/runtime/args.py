"""Model hyper-parameters, named exactly as the keys of the checkpoint's `config.json`.

Two dialects of config.json exist for DeepSeek-V4: the official root file (`compress_ratios`,
`num_hash_layers`, `rope_scaling`, ...) and the transformers one (`layer_types`, `compress_rates`,
`mlp_layer_types`, `rope_parameters`). `ModelArgs.from_dict` reads both; unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

_LAYER_TYPE_DEFAULT_RATIO = {
    "sliding_attention": 0,
    "compressed_sparse_attention": 4,
    "heavily_compressed_attention": 128,
}


class ConfigError(UserError, ValueError):
    """A config.json that cannot describe a DeepSeek-V4 model; the message names the key."""


class ContextLimitError(UserError, ValueError):
    """A context or prompt longer than the model or the engine holds; the message gives both numbers."""


@dataclass
class ModelArgs:
    vocab_size: int = 129280
    hidden_size: int = 4096
    num_hidden_layers: int = 43
    num_attention_heads: int = 64
    num_key_value_heads: int = 1
    head_dim: int = 512
    qk_rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    n_routed_experts: int = 256
    num_experts_per_tok: int = 6
    n_shared_experts: int = 1
    moe_intermediate_size: int = 2048
    scoring_func: str = "sqrtsoftplus"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    num_hash_layers: int = 3
    swiglu_limit: float = 10.0
    sliding_window: int = 128
    compress_ratios: list[int] = field(default_factory=lambda: [0, 0] + [4, 128] * 20 + [4, 0])
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rope_scaling: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "yarn",
            "factor": 16,
            "original_max_position_embeddings": 65536,
            "beta_fast": 32,
            "beta_slow": 1,
        }
    )
    max_position_embeddings: int = 1048576
    num_nextn_predict_layers: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 1
    tie_word_embeddings: bool = False
    quantization_config: dict[str, Any] | None = None
    expert_dtype: str | None = None
    torch_dtype: str = "bfloat16"
    model_type: str = "deepseek_v4"

    # ---- derived views -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_mtp(self) -> int:
        return self.num_nextn_predict_layers

    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.qk_rope_head_dim

    @property
    def fp8_weights(self) -> bool:
        qc = self.quantization_config or {}
        return qc.get("quant_method") == "fp8"

    @property
    def fp4_experts(self) -> bool:
        return (self.expert_dtype or (self.quantization_config or {}).get("expert_dtype")) == "fp4"

    @property
    def yarn(self) -> dict[str, float] | None:
        rs = self.rope_scaling or {}
        if rs.get("type", rs.get("rope_type")) != "yarn":
            return None
        return {
            "factor": float(rs.get("factor", 1.0)),
            "original_seq_len": int(rs.get("original_max_position_embeddings", 0)),
            "beta_fast": float(rs.get("beta_fast", 32)),
            "beta_slow": float(rs.get("beta_slow", 1)),
        }

    def check_context(self, context: int) -> None:
        """Refuse a context beyond the model's own (its positions, and so its RoPE, end there)."""
        if context > self.max_position_embeddings:
            raise ContextLimitError(f"a context of {context:,} tokens is more than this model holds: its limit is "
                                    f"{self.max_position_embeddings:,} (max_position_embeddings in its config.json); "
                                    f"use --context {self.max_position_embeddings} or less")

    def layer_ratio(self, layer: int) -> int:
        return self.compress_ratios[layer]

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelArgs:
        d = dict(raw)
        if "layer_types" in d and "compress_ratios" not in d:
            d["compress_ratios"] = _ratios_from_layer_types(d)
        if "mlp_layer_types" in d and "num_hash_layers" not in d:
            d["num_hash_layers"] = _hash_layers_from_mlp_types(d["mlp_layer_types"])
        if isinstance(d.get("rope_parameters"), dict):
            _fold_rope_parameters(d, d["rope_parameters"])
        if "partial_rotary_factor" in d and "qk_rope_head_dim" not in d and d["partial_rotary_factor"]:
            d["qk_rope_head_dim"] = int(round(d.get("head_dim", 512) * d["partial_rotary_factor"]))
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = d["eos_token_id"][0]
        names = {f.name for f in dataclasses.fields(cls)}
        args = cls(**{k: v for k, v in d.items() if k in names and v is not None})
        # transformers configs drop the MTP entry of compress_ratios; the MTP block is window-only.
        if len(args.compress_ratios) == args.num_hidden_layers and "layer_types" in raw:
            args.compress_ratios = list(args.compress_ratios) + [0] * args.num_nextn_predict_layers
        args.compress_ratios = [int(r) for r in args.compress_ratios]
        args.validate()
        return args

    @classmethod
    def from_file(cls, path: str | Path) -> ModelArgs:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:  # permission denied, ...
            raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        problems: list[str] = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                problems.append(msg)

        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "vocab_size",
                     "q_lora_rank", "o_groups", "o_lora_rank", "n_routed_experts", "num_experts_per_tok",
                     "moe_intermediate_size", "sliding_window", "hc_mult", "index_n_heads", "index_head_dim"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                 f"`{name}` must be a positive integer (got {getattr(self, name)!r})")
        if problems:
            raise ConfigError("invalid config.json: " + "; ".join(problems))
        n_total = self.num_hidden_layers + self.num_nextn_predict_layers
        need(len(self.compress_ratios) == n_total,
             f"`compress_ratios` has {len(self.compress_ratios)} entries but num_hidden_layers + "
             f"num_nextn_predict_layers = {n_total}")
        need(all(r >= 0 for r in self.compress_ratios), "`compress_ratios` entries must be >= 0")
        need(all(r == 0 for r in self.compress_ratios[self.num_hidden_layers:]),
             "`compress_ratios`: the MTP entries (the last num_nextn_predict_layers) must be 0")
        need(all(r != 1 for r in self.compress_ratios), "`compress_ratios`: ratio 1 is not a compression")
        need(self.num_attention_heads % self.o_groups == 0,
             f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `o_groups` ({self.o_groups})")
        need(self.num_key_value_heads == 1, "`num_key_value_heads` must be 1 (V4 shares one KV head)")
        need(self.n_shared_experts == 1, "`n_shared_experts` must be 1")
        need(self.num_experts_per_tok <= self.n_routed_experts,
             "`num_experts_per_tok` must not exceed `n_routed_experts`")
        need(0 <= self.num_hash_layers <= self.num_hidden_layers,
             "`num_hash_layers` must be between 0 and num_hidden_layers")
        need(self.qk_rope_head_dim % 2 == 0 and 0 < self.qk_rope_head_dim <= self.head_dim,
             "`qk_rope_head_dim` must be even and at most head_dim")
        need(self.qk_rope_head_dim <= self.index_head_dim, "`qk_rope_head_dim` must be at most `index_head_dim`")
        need(self.nope_head_dim % 64 == 0,
             "`head_dim - qk_rope_head_dim` must be a multiple of 64 (FP8 kv blocks)")
        need(self.index_head_dim % 32 == 0 and self.index_head_dim & (self.index_head_dim - 1) == 0,
             "`index_head_dim` must be a power of two and a multiple of 32 (Hadamard, FP4 blocks)")
        need(self.scoring_func in ("sqrtsoftplus", "sigmoid", "softmax"),
             f"`scoring_func` {self.scoring_func!r} is not one of sqrtsoftplus, sigmoid, softmax")
        need(self.hc_sinkhorn_iters >= 1, "`hc_sinkhorn_iters` must be >= 1")
        if self.fp4_experts:
            need(self.hidden_size % 32 == 0 and self.moe_intermediate_size % 32 == 0,
                 "`expert_dtype` fp4 needs hidden_size and moe_intermediate_size to be multiples of 32")
        qc = self.quantization_config
        if qc is not None:
            need(isinstance(qc, dict), "`quantization_config` must be an object")
            if isinstance(qc, dict) and qc.get("quant_method") == "fp8":
                need(list(qc.get("weight_block_size", [128, 128])) == [128, 128],
                     "`quantization_config.weight_block_size` must be [128, 128]")
        if self.expert_dtype not in (None, "fp4", "fp8"):
            problems.append(f"`expert_dtype` {self.expert_dtype!r} is not fp4 or fp8")
        if problems:
            raise ConfigError("invalid config.json: " + "; ".join(problems))


def _ratios_from_layer_types(d: dict[str, Any]) -> list[int]:
    rates = dict(_LAYER_TYPE_DEFAULT_RATIO)
    for k, v in (d.get("compress_rates") or {}).items():
        rates[k] = int(v)
    out = []
    for i, t in enumerate(d["layer_types"]):
        if t not in rates:
            raise ConfigError(f"`layer_types[{i}]` = {t!r} is not one of {sorted(rates)}")
        out.append(rates[t])
    return out


def _hash_layers_from_mlp_types(types: list[str]) -> int:
    n = 0
    while n < len(types) and types[n] == "hash_moe":
        n += 1
    if any(t == "hash_moe" for t in types[n:]):
        raise ConfigError("`mlp_layer_types`: hash_moe layers must come first")
    return n


def _fold_rope_parameters(d: dict[str, Any], rp: dict[str, Any]) -> None:
    main, comp = rp.get("main"), rp.get("compress")
    if isinstance(main, dict) and "rope_theta" in main:
        d.setdefault("rope_theta", main["rope_theta"])
    if isinstance(comp, dict):
        if "rope_theta" in comp:
            d.setdefault("compress_rope_theta", comp["rope_theta"])
        kind = comp.get("rope_type", comp.get("type"))
        if kind == "yarn" and "rope_scaling" not in d:
            d["rope_scaling"] = {k: v for k, v in comp.items() if k not in ("rope_theta", "partial_rotary_factor")}
            d["rope_scaling"]["type"] = "yarn"

