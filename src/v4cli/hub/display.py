"""`show`: what a model is (its config in words, its size) and, with a context, the memory it needs here.

V4-Flash's and V4-Pro's config.json ship with v4 (configs/, the values of the official files), so a model
that is not pulled yet still gets its memory plan: a user learns whether it fits before a 160 GB download.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sizes import gigabytes
from .catalog import resolve
from .env import folder_size
from .errors import HubError, ModelNotFound
from .names import ALIASES, BUILTIN, alias_of, repo_id_of

if TYPE_CHECKING:
    from ..runtime.args import ModelArgs
    from ..runtime.plan import MemoryPlan

PLAN_CONTEXT = 32768  # the context of a not-yet-pulled model's plan without --context (v4 chat's default)


def known_config(name: str) -> dict[str, Any] | None:
    """The shipped config.json of flash or pro (by alias or repo id); None for any other name."""
    alias = alias_of(repo_id_of(name) or name)
    if alias not in ALIASES or alias == BUILTIN:
        return None
    return json.loads(resources.files(__package__).joinpath("configs", f"{alias}.json").read_text())


def memory_plan(args: ModelArgs, context: int, device: str = "auto") -> MemoryPlan:
    """The plan of one sequence at `context` tokens on this machine's `device` (arithmetic on the config:
    nothing is read)."""
    from ..runtime import devices
    from ..runtime import plan as memplan

    args.check_context(context)
    return memplan.plan(args, context, 1, device=devices.resolve(device))


def download_bytes(args: ModelArgs) -> int:
    """About what a pull of the model downloads: its weights as stored (FP8 and FP4 stay packed)."""
    from ..runtime.plan import weight_bytes

    return weight_bytes(args)


def show(name: str, context: int | None = None, revision: str | None = None, device: str = "auto") -> dict[str, Any]:
    """A summary of a model's config and its size on disk; with `context`, the memory plan at that context.
    flash and pro answer before they are pulled too (`pulled: false`, plan always included)."""
    from ..runtime.args import ModelArgs

    try:
        m = resolve(name, revision)
    except ModelNotFound:
        raw = known_config(name) if revision is None else None
        if raw is None:
            raise
        args = ModelArgs.from_dict(raw)
        out = _summary(name, args, raw) | {"kind": "hub", "path": None, "repo_id": repo_id_of(name),
                                           "revision": None, "pulled": False,
                                           "download_bytes": download_bytes(args), "disk_bytes": 0}
        out["status"] = f"not pulled yet (`v4 pull {name}`, {gigabytes(out['download_bytes'])})"
        out["memory_plan"] = memory_plan(args, context or PLAN_CONTEXT, device).summary()
        return out
    assert m.path is not None
    config = m.path / "config.json"
    args = ModelArgs.from_file(config)
    raw = json.loads(config.read_text())
    weights = _total_size(m.path / "model.safetensors.index.json")
    out = _summary(name, args, raw) | {"kind": m.kind, "path": str(m.path), "repo_id": m.repo_id,
                                       "revision": m.revision, "pulled": True, "weights_bytes": weights,
                                       "disk_bytes": folder_size(m.path)}
    if context is not None:
        args.check_context(context)
    from ..runtime.description import describe  # headers only: layout, storage, problems, memory plan

    out.update(describe(m.path, context, device))
    return out


def _total_size(index: Path) -> int | None:
    """The index's metadata.total_size (None without an index)."""
    if not index.exists():
        return None
    try:
        return json.loads(index.read_text()).get("metadata", {}).get("total_size")
    except (OSError, ValueError, AttributeError) as e:
        raise HubError(f"{index} cannot be read ({e}): the folder is not a usable checkpoint") from None


def _summary(name: str, args: ModelArgs, raw: dict[str, Any]) -> dict[str, Any]:
    kinds = {0: "sliding window", 4: "CSA (ratio 4)"}
    layer_types: dict[str, int] = {}
    for r in args.compress_ratios[: args.n_layers]:
        key = kinds.get(r, f"HCA (ratio {r})")
        layer_types[key] = layer_types.get(key, 0) + 1
    quant = "none (bf16)"
    if args.fp8_weights:
        quant = "FP8 e4m3 weights" + (", FP4 experts" if args.fp4_experts else "")
    return {
        "name": name, "architecture": (raw.get("architectures") or ["?"])[0], "hidden_size": args.hidden_size,
        "layers": args.n_layers, "mtp_layers": args.n_mtp, "layer_types": layer_types,
        "attention_heads": args.num_attention_heads, "head_dim": args.head_dim,
        "routed_experts": args.n_routed_experts, "active_experts": args.num_experts_per_tok,
        "shared_experts": args.n_shared_experts, "hash_layers": args.num_hash_layers, "vocab_size": args.vocab_size,
        "context_length": args.max_position_embeddings, "sliding_window": args.sliding_window,
        "quantization": quant,
    }


def plan_for_pull(name: str, context: int, device: str = "auto") -> MemoryPlan | None:
    """The plan `v4 pull` prints first: from the config already pulled, else the shipped one (flash, pro);
    None for any other repo not pulled yet (its config is not known before the download)."""
    from ..runtime.args import ModelArgs

    if repo_id_of(name) is None:
        return None  # tiny, a folder or no model at all: pull says what it does with those
    try:
        path = resolve(name).path
        assert path is not None
        args = ModelArgs.from_file(path / "config.json")
    except ModelNotFound:
        raw = known_config(name)
        if raw is None:
            return None
        args = ModelArgs.from_dict(raw)
    return memory_plan(args, context, device)
