"""Checkpoint -> model: one name table for the official and the transformers layouts, every tensor checked.

Loading builds the model on the meta device, checks every tensor of the checkpoint against it (all
problems are collected and reported together), then installs the mapped tensors. Nothing half-loaded
is ever returned: a single problem stops the load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..errors import UserError
from .args import ConfigError, ModelArgs
from .model import Transformer
from .safetensors_mmap import DTYPE_NAMES, Shard, ShardError

FLOAT_DTYPES = {"F32", "BF16", "F16", "F64"}


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded; the message lists every problem found."""


# ---- the name table ------------------------------------------------------------------------------
# (official regex, transformers replacement). Applied to names with the "layers.N." / root prefix removed.
_LAYER_RULES: list[tuple[str, str]] = [
    (r"attn_norm\.weight", "input_layernorm.weight"),
    (r"ffn_norm\.weight", "post_attention_layernorm.weight"),
    (r"hc_attn_(fn|base|scale)", r"attn_hc.\1"),
    (r"hc_ffn_(fn|base|scale)", r"ffn_hc.\1"),
    (r"attn\.wq_a\.", "self_attn.q_a_proj."),
    (r"attn\.q_norm\.", "self_attn.q_a_norm."),
    (r"attn\.wq_b\.", "self_attn.q_b_proj."),
    (r"attn\.wkv\.", "self_attn.kv_proj."),
    (r"attn\.kv_norm\.", "self_attn.kv_norm."),
    (r"attn\.wo_a\.", "self_attn.o_a_proj."),
    (r"attn\.wo_b\.", "self_attn.o_b_proj."),
    (r"attn\.attn_sink", "self_attn.sinks"),
    (r"attn\.indexer\.wq_b\.", "self_attn.compressor.indexer.q_b_proj."),
    (r"attn\.indexer\.weights_proj\.", "self_attn.compressor.indexer.scorer.weights_proj."),
    (r"attn\.indexer\.compressor\.wkv\.", "self_attn.compressor.indexer.kv_proj."),
    (r"attn\.indexer\.compressor\.wgate\.", "self_attn.compressor.indexer.gate_proj."),
    (r"attn\.indexer\.compressor\.ape", "self_attn.compressor.indexer.position_bias"),
    (r"attn\.indexer\.compressor\.norm\.", "self_attn.compressor.indexer.kv_norm."),
    (r"attn\.compressor\.wkv\.", "self_attn.compressor.kv_proj."),
    (r"attn\.compressor\.wgate\.", "self_attn.compressor.gate_proj."),
    (r"attn\.compressor\.ape", "self_attn.compressor.position_bias"),
    (r"attn\.compressor\.norm\.", "self_attn.compressor.kv_norm."),
    (r"ffn\.gate\.weight", "mlp.gate.weight"),
    (r"ffn\.gate\.bias", "mlp.gate.e_score_correction_bias"),
    (r"ffn\.gate\.tid2eid", "mlp.gate.tid2eid"),
    (r"ffn\.shared_experts\.w1\.", "mlp.shared_experts.gate_proj."),
    (r"ffn\.shared_experts\.w3\.", "mlp.shared_experts.up_proj."),
    (r"ffn\.shared_experts\.w2\.", "mlp.shared_experts.down_proj."),
]
_ROOT_RULES = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight",
               "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
               "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}
_EXPERT = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$")
_HF_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def official_to_hf(name: str) -> str:
    """The transformers name of an official tensor name (routed experts are fused separately)."""
    if name in _ROOT_RULES:
        return _ROOT_RULES[name]
    if name.startswith("mtp."):
        return name  # transformers does not model MTP; converted checkpoints keep the official names
    m = re.match(r"^layers\.(\d+)\.(.*)$", name)
    if not m:
        return name
    rest = re.sub(r"\.scale$", ".weight_scale_inv", m.group(2))  # mHC scales are `*_scale`, not `.scale`
    for pat, rep in _LAYER_RULES:
        rest, n = re.subn("^" + pat, rep, rest)
        if n:
            break
    return f"model.layers.{m.group(1)}.{rest}"


def internal_to_official(name: str) -> str:
    """Our module names equal the official ones except for the mHC triples (`hc_attn.fn` -> `hc_attn_fn`)."""
    return re.sub(r"(^|\.)(hc_attn|hc_ffn|hc_head)\.(fn|base|scale)$", r"\1\2_\3", name)


def official_to_internal(name: str) -> str:
    return re.sub(r"(^|\.)(hc_attn|hc_ffn|hc_head)_(fn|base|scale)$", r"\1\2.\3", name)


# ---- reading a checkpoint folder ----------------------------------------------------------------------
class Checkpoint:
    """The tensors of a checkpoint folder by name, across shards, with the index checked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        problems: list[str] = []
        index = self.path / "model.safetensors.index.json"
        self.shards: dict[str, Shard] = {}
        self.where: dict[str, str] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index}: not a valid safetensors index (no weight_map)") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files and no model.safetensors.index.json")
        for fname in files:
            fpath = self.path / fname
            if not fpath.exists():
                problems.append(f"the index points at {fname}, which is missing")
                continue
            try:
                self.shards[fname] = Shard(fpath)
            except ShardError as e:
                problems.append(str(e))
        for fname, shard in self.shards.items():
            for name in shard.names():
                self.where[name] = fname
        if weight_map is not None:
            for name, fname in weight_map.items():
                if fname in self.shards and name not in self.shards[fname].entries:
                    problems.append(f"the index places {name} in {fname}, which does not hold it")
        if problems:
            raise CheckpointError(_report(self.path, problems))

    def names(self) -> list[str]:
        return list(self.where)

    def dtype_name(self, name: str) -> str:
        return self.shards[self.where[name]].dtype_name(name)

    def shape(self, name: str) -> list[int]:
        return self.shards[self.where[name]].shape(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self.shards[self.where[name]].tensor(name)

    @property
    def layout(self) -> str:
        return "hf" if any(n.startswith(("model.", "lm_head.")) for n in self.where) else "official"


def _report(path: Path, problems: list[str]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems[:200])
    more = f"\n  ... and {len(problems) - 200} more" if len(problems) > 200 else ""
    return f"cannot load the checkpoint at {path}: {len(problems)} problem(s):\n{lines}{more}"


# ---- mapping checkpoint tensors onto the model ---------------------------------------------------------
Source = Callable[[], torch.Tensor]


def _sources(ckpt: Checkpoint, args: ModelArgs, expected: Iterable[str]
             ) -> tuple[dict[str, tuple[Source, list[int], str]], list[str]]:
    """internal name -> (loader, shape, dtype name); plus problems found while mapping names.
    `expected`: the model's buffer names, from which the transformers names are derived."""
    out: dict[str, tuple[Source, list[int], str]] = {}
    problems: list[str] = []
    if ckpt.layout == "official":
        for name in ckpt.names():
            out[official_to_internal(name)] = (lambda n=name: ckpt.tensor(n), ckpt.shape(name), ckpt.dtype_name(name))
        return out, problems
    reverse = {}
    for name in ckpt.names():
        m = _HF_FUSED.match(name)
        if m:
            layer, kind = m.groups()
            shape, dt = ckpt.shape(name), ckpt.dtype_name(name)
            if len(shape) != 3 or shape[0] != args.n_routed_experts:
                problems.append(f"{name}: shape {shape} is not [n_routed_experts={args.n_routed_experts}, ...]")
                continue
            for e in range(shape[0]):
                if kind == "gate_up_proj":
                    half = shape[1] // 2
                    for w, sl in (("w1", slice(0, half)), ("w3", slice(half, None))):
                        out[f"layers.{layer}.ffn.experts.{e}.{w}.weight"] = (
                            lambda n=name, e=e, sl=sl: ckpt.tensor(n)[e, sl], [half, shape[2]], dt)
                else:
                    out[f"layers.{layer}.ffn.experts.{e}.w2.weight"] = (
                        lambda n=name, e=e: ckpt.tensor(n)[e], shape[1:], dt)
            continue
        reverse[name] = name
    table = {official_to_hf(internal_to_official(k)): k for k in expected}
    for name in reverse:
        internal = table.get(name)
        if internal is None:
            out["<unmapped>" + name] = (lambda n=name: ckpt.tensor(n), ckpt.shape(name), ckpt.dtype_name(name))
        else:
            out[internal] = (lambda n=name: ckpt.tensor(n), ckpt.shape(name), ckpt.dtype_name(name))
    return out, problems


def _check(name: str, want: torch.Tensor, shape: list[int], dtype: str) -> str | None:
    if list(want.shape) != list(shape):
        return f"{internal_to_official(name)}: shape {shape}, expected {list(want.shape)}"
    expected = DTYPE_NAMES[want.dtype]
    if want.dtype.is_floating_point and want.dtype not in (torch.float8_e4m3fn, torch.float8_e8m0fnu):
        if dtype not in FLOAT_DTYPES:
            return f"{internal_to_official(name)}: dtype {dtype}, expected a float type"
    elif want.dtype == torch.int64:
        if dtype not in ("I64", "I32"):
            return f"{internal_to_official(name)}: dtype {dtype}, expected I64"
    elif dtype != expected:
        return f"{internal_to_official(name)}: dtype {dtype}, expected {expected}"
    return None


def _expert_format(ckpt: Checkpoint, args: ModelArgs) -> str | None:
    """The routed experts' storage as found on disk (transformers checkpoints fuse them, as floats)."""
    if ckpt.layout == "hf":
        return "float"
    name = "layers.0.ffn.experts.0.w1.weight"
    if name in ckpt.where:
        dt = ckpt.dtype_name(name)
        if dt == "I8":
            return "fp4"
        return "fp8" if dt == "F8_E4M3" else "float"
    return None


def drop_absent_mtp(ckpt: Checkpoint, args: ModelArgs) -> None:
    """Transformers checkpoints may leave out the MTP block: then the model runs without it."""
    if ckpt.layout == "hf" and not any(n.startswith("mtp.") for n in ckpt.where):
        args.num_nextn_predict_layers = 0
        args.compress_ratios = args.compress_ratios[: args.num_hidden_layers]


# Kept as stored (BF16, or FP32 in a float re-export) whatever the model's dtype: the embedding is read a row
# per token and the head is a float32-accumulating product either way, so widening them at load only costs
# memory and bytes read per token.
STORED_PRECISION = frozenset({"embed.weight", "head.weight"})


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               simulate_quant: bool = True) -> Transformer:
    """Load a DeepSeek-V4 checkpoint folder (official or transformers layout) into a `Transformer`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    try:
        args = ModelArgs.from_file(path)
    except ConfigError as e:
        raise CheckpointError(f"cannot load the checkpoint at {path}: {e}") from None
    ckpt = Checkpoint(path)
    drop_absent_mtp(ckpt, args)
    with torch.device("meta"):
        model = Transformer(args, simulate_quant, dtype, expert_fmt=_expert_format(ckpt, args))
    expected = dict(model.named_buffers())
    sources, problems = _sources(ckpt, args, expected)
    for name in sorted(set(expected) - set(sources)):
        problems.append(f"missing tensor {internal_to_official(name)} (shape {list(expected[name].shape)})")
    for name in sorted(set(sources) - set(expected)):
        problems.append(f"unexpected tensor {internal_to_official(name).removeprefix('<unmapped>')}")
    for name in sorted(set(sources) & set(expected)):
        _, shape, dt = sources[name]
        if (msg := _check(name, expected[name], shape, dt)) is not None:
            problems.append(msg)
    if not problems:
        for name, t in expected.items():
            if t.dtype == torch.float8_e8m0fnu:
                raw = sources[name][0]()
                if bool((raw.view(torch.uint8) == 255).any()):
                    problems.append(f"{internal_to_official(name)}: holds NaN scale bytes (0xFF): corrupt data")
    if problems:
        raise CheckpointError(_report(path, problems))
    for name, want in expected.items():
        t = sources[name][0]()
        if name in STORED_PRECISION and t.dtype in (torch.float32, torch.bfloat16):
            t = t.to(device)
        elif want.dtype.is_floating_point and want.dtype not in (torch.float8_e4m3fn, torch.float8_e8m0fnu):
            t = t.to(device=device, dtype=want.dtype)
        else:
            t = t.to(device=device, dtype=want.dtype) if t.dtype != want.dtype else t.to(device)
        mod_name, _, buf = name.rpartition(".")
        model.get_submodule(mod_name)._buffers[buf] = t
    model.eval()
    return model
