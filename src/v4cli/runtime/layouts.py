"""The checkpoint layouts v4 loads, as one name table, and recognising a checkpoint's layout from its names.

Three namings of the same tensors exist on disk:
- "official": what deepseek-ai ship (`layers.N.attn.wq_a.weight`, `.scale` for FP8/FP4 scales);
- "transformers": transformers' in-memory names (`model.layers.N.self_attn.q_a_proj.weight`, scales as
  `.weight_scale_inv`, the routed experts fused into `mlp.experts.gate_up_proj` / `down_proj`);
- "save_pretrained": what transformers' `save_pretrained` writes for DeepseekV4ForCausalLM. It reverses its
  renaming on the way out, but only partly, and differently for a model made by `from_pretrained` and one
  built from a config: official names under a `model.` prefix, experts un-fused again, yet
  `model.embed_tokens` and `model.hc_head.hc_fn` kept, `attn.kv_norm` written as `attn.norm`, and the
  compressor and indexer names half converted. The table lists every spelling seen (transformers 5.24).
Any of them may hold FP8/FP4 weights with scales or plain floats (BF16, FP32): the storage is read from the
dtypes, not from the names. MTP tensors (`mtp.N.*`) keep their official names everywhere: transformers does
not model MTP, so the two transformers layouts may leave the block out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Layout:
    key: str
    title: str
    fused_experts: bool  # routed experts stored as [E, ...] tensors per layer
    mtp_optional: bool  # may leave out the MTP block (then the model runs without it)


OFFICIAL = Layout("official", "official (deepseek-ai release)", False, False)
TRANSFORMERS = Layout("transformers", "transformers (in-memory names)", True, True)
SAVE_PRETRAINED = Layout("save_pretrained", "transformers save_pretrained", False, True)
LAYOUTS = (OFFICIAL, TRANSFORMERS, SAVE_PRETRAINED)

# ---- the name table ------------------------------------------------------------------------------------
# Modules (followed by `.weight`, and `.scale` when quantized) and parameters below `layers.N.`:
# official name -> (transformers name, save_pretrained spellings).
_LAYER: dict[str, tuple[str, tuple[str, ...]]] = {
    "attn_norm": ("input_layernorm", ("attn_norm",)),
    "ffn_norm": ("post_attention_layernorm", ("ffn_norm",)),
    "hc_attn_fn": ("attn_hc.fn", ("hc_attn_fn",)),
    "hc_attn_base": ("attn_hc.base", ("hc_attn_base",)),
    "hc_attn_scale": ("attn_hc.scale", ("hc_attn_scale",)),
    "hc_ffn_fn": ("ffn_hc.fn", ("hc_ffn_fn",)),
    "hc_ffn_base": ("ffn_hc.base", ("hc_ffn_base",)),
    "hc_ffn_scale": ("ffn_hc.scale", ("hc_ffn_scale",)),
    "attn.wq_a": ("self_attn.q_a_proj", ("attn.wq_a",)),
    "attn.q_norm": ("self_attn.q_a_norm", ("attn.q_norm",)),
    "attn.wq_b": ("self_attn.q_b_proj", ("attn.wq_b",)),
    "attn.wkv": ("self_attn.kv_proj", ("attn.wkv",)),
    "attn.kv_norm": ("self_attn.kv_norm", ("attn.norm", "attn.kv_norm")),
    "attn.wo_a": ("self_attn.o_a_proj", ("attn.wo_a",)),
    "attn.wo_b": ("self_attn.o_b_proj", ("attn.wo_b",)),
    "attn.attn_sink": ("self_attn.sinks", ("attn.attn_sink",)),
    "attn.compressor.wkv": ("self_attn.compressor.kv_proj", ("attn.compressor.wkv",)),
    "attn.compressor.wgate": ("self_attn.compressor.gate_proj", ("attn.compressor.gate_proj", "attn.compressor.wgate")),
    "attn.compressor.ape": ("self_attn.compressor.position_bias",
                            ("attn.compressor.position_bias", "attn.compressor.ape")),
    "attn.compressor.norm": ("self_attn.compressor.kv_norm", ("attn.compressor.norm",)),
    "attn.indexer.wq_b": ("self_attn.compressor.indexer.q_b_proj",
                          ("attn.compressor.indexer.q_b_proj", "attn.indexer.wq_b")),
    "attn.indexer.weights_proj": ("self_attn.compressor.indexer.scorer.weights_proj",
                                  ("attn.compressor.indexer.scorer.weights_proj", "attn.indexer.weights_proj")),
    "attn.indexer.compressor.wkv": ("self_attn.compressor.indexer.kv_proj",
                                    ("attn.compressor.indexer.wkv", "attn.indexer.compressor.wkv")),
    "attn.indexer.compressor.wgate": ("self_attn.compressor.indexer.gate_proj",
                                      ("attn.compressor.indexer.gate_proj", "attn.indexer.compressor.wgate")),
    "attn.indexer.compressor.ape": ("self_attn.compressor.indexer.position_bias",
                                    ("attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape")),
    "attn.indexer.compressor.norm": ("self_attn.compressor.indexer.kv_norm",
                                     ("attn.compressor.indexer.norm", "attn.indexer.compressor.norm")),
    "ffn.gate": ("mlp.gate", ("ffn.gate",)),
    "ffn.gate.bias": ("mlp.gate.e_score_correction_bias", ("ffn.gate.bias",)),
    "ffn.gate.tid2eid": ("mlp.gate.tid2eid", ("ffn.gate.tid2eid",)),
    "ffn.shared_experts.w1": ("mlp.shared_experts.gate_proj", ("ffn.shared_experts.w1",)),
    "ffn.shared_experts.w3": ("mlp.shared_experts.up_proj", ("ffn.shared_experts.w3",)),
    "ffn.shared_experts.w2": ("mlp.shared_experts.down_proj", ("ffn.shared_experts.w2",)),
    "ffn.experts.*.w1": ("", ("ffn.experts.*.w1",)),  # transformers fuses these: see Match.fused
    "ffn.experts.*.w3": ("", ("ffn.experts.*.w3",)),
    "ffn.experts.*.w2": ("", ("ffn.experts.*.w2",)),
}
_ROOT: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed": ("model.embed_tokens", ("model.embed_tokens", "embed")),
    "head": ("lm_head", ("lm_head", "head")),
    "norm": ("model.norm", ("model.norm",)),
    "hc_head_fn": ("model.hc_head.hc_fn", ("model.hc_head.hc_fn", "hc_head_fn")),
    "hc_head_base": ("model.hc_head.hc_base", ("model.hc_head.hc_base", "hc_head_base")),
    "hc_head_scale": ("model.hc_head.hc_scale", ("model.hc_head.hc_scale", "hc_head_scale")),
}
# The quantization scale of a module's weight, per layout (mHC's `hc_*_scale` are parameters, not these).
_SCALE = {"official": ("scale",), "transformers": ("weight_scale_inv",),
          "save_pretrained": ("scale", "weight_scale_inv")}
_LEAVES = ("weight", "scale")
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^ffn\.experts\.(\d+)\.(w[123])$")
_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _split(rest: str) -> tuple[str, str | None]:
    """(module or parameter, leaf): `attn.wq_a.scale` -> (`attn.wq_a`, `scale`); `attn.attn_sink` -> (it, None)."""
    stem, _, leaf = rest.rpartition(".")
    return (stem, leaf) if stem and leaf in _LEAVES else (rest, None)


def _spell_in(table: dict[str, tuple[str, tuple[str, ...]]], layout: Layout, rest: str) -> tuple[str, ...]:
    stem, leaf = _split(rest)
    expert = _EXPERT.match(stem)
    key = f"ffn.experts.*.{expert.group(2)}" if expert else stem
    if key not in table:
        return ()
    hf, saved = table[key]
    stems = (stem,) if layout is OFFICIAL else (hf,) if layout is TRANSFORMERS else saved
    if expert:
        stems = tuple(s.replace("*", expert.group(1)) for s in stems)
    if not all(stems):
        return ()
    leaves = ("",) if leaf is None else (".weight",) if leaf == "weight" else tuple("." + s for s in _SCALE[layout.key])
    return tuple(s + lf for s in stems for lf in leaves)


def spell(layout: Layout, official: str) -> tuple[str, ...]:
    """Every name `layout` may give the official tensor `official`, the usual one first; () when the layout
    stores it only inside a fused tensor (the routed experts in transformers' names) or does not know it."""
    if layout is OFFICIAL or official.startswith("mtp."):
        return (official,)
    m = _LAYER_NAME.match(official)
    if m:
        return tuple(f"model.layers.{m.group(1)}.{s}" for s in _spell_in(_LAYER, layout, m.group(2)))
    return _spell_in(_ROOT, layout, official)


def official_to_hf(name: str) -> str:
    """The transformers name of an official tensor name (its routed experts are fused: see Match.fused)."""
    return next(iter(spell(TRANSFORMERS, name)), name)


def internal_to_official(name: str) -> str:
    """Our module names equal the official ones except for the mHC triples (`hc_attn.fn` -> `hc_attn_fn`)."""
    return re.sub(r"(^|\.)(hc_attn|hc_ffn|hc_head)\.(fn|base|scale)$", r"\1\2_\3", name)


def official_to_internal(name: str) -> str:
    return re.sub(r"(^|\.)(hc_attn|hc_ffn|hc_head)_(fn|base|scale)$", r"\1\2.\3", name)


# ---- recognising a layout --------------------------------------------------------------------------------
def _inverse(table: dict[str, tuple[str, tuple[str, ...]]], layout: Layout) -> dict[str, str]:
    out = {}
    for off, (hf, saved) in table.items():
        for spelled in (off,) if layout is OFFICIAL else (hf,) if layout is TRANSFORMERS else saved:
            if spelled:
                out[spelled] = off
    return out


_INVERSE = {layout.key: (_inverse(_LAYER, layout), _inverse(_ROOT, layout)) for layout in LAYOUTS}
_LEAF_OF = {key: {"weight": "weight", **{s: "scale" for s in scales}} for key, scales in _SCALE.items()}
_PREFIX = {"official": "layers.", "transformers": "model.layers.", "save_pretrained": "model.layers."}
_ANY_EXPERT = re.compile(r"^ffn\.experts\.(\d+)\.")


def _parse_in(table: dict[str, str], layout: Layout, rest: str) -> str | None:
    expert = _ANY_EXPERT.match(rest)
    key = _ANY_EXPERT.sub("ffn.experts.*.", rest) if expert else rest
    stem, _, leaf = key.rpartition(".")
    leaves = _LEAF_OF[layout.key]
    if stem in table and leaf in leaves:
        off = f"{table[stem]}.{leaves[leaf]}"
    elif key in table:
        off = table[key]
    else:
        return None
    return off.replace("*", expert.group(1)) if expert else off


def parse(layout: Layout, name: str) -> str | None:
    """The official name of checkpoint tensor `name` read in `layout`, or None when the layout has no such name."""
    if name.startswith("mtp."):
        return name
    layer_table, root_table = _INVERSE[layout.key]
    prefix = _PREFIX[layout.key]
    if name.startswith(prefix):
        index, _, rest = name.removeprefix(prefix).partition(".")
        if index.isdigit() and (off := _parse_in(layer_table, layout, rest)) is not None:
            return f"layers.{index}.{off}"
        return None
    return _parse_in(root_table, layout, name)


@dataclass
class Match:
    """How a checkpoint's names read in one layout."""

    layout: Layout
    names: dict[str, str] = field(default_factory=dict)  # checkpoint name -> official name
    fused: dict[str, tuple[int, str]] = field(default_factory=dict)  # fused name -> (layer, gate_up_proj|down_proj)
    unknown: list[str] = field(default_factory=list)  # checkpoint names this layout does not have

    @property
    def recognised(self) -> int:
        return len(self.names) + len(self.fused)


def recognise(names: Iterable[str]) -> list[Match]:
    """Read a checkpoint's names in every layout, best first (most names recognised; ties keep the table's
    order). Whether the model has each tensor is the loader's check, not this one's."""
    names = list(names)
    matches = []
    for layout in LAYOUTS:
        match = Match(layout)
        for name in names:
            fused = _FUSED.match(name) if layout.fused_experts else None
            if fused:
                match.fused[name] = (int(fused.group(1)), fused.group(2))
            elif (off := parse(layout, name)) is not None:
                match.names[name] = off
            else:
                match.unknown.append(name)
        matches.append(match)
    return sorted(matches, key=lambda m: -m.recognised)
