"""Checkpoint -> model: the layout recognised from the names, the storage from the dtypes, every tensor checked.

Reading a checkpoint (`read_checkpoint`) recognises its layout (runtime/layouts.py), reads the storage
formats from the dtypes (FP8/FP4 with scales, or floats) and builds the model on the meta device to match;
then every tensor is checked against it, and all problems are collected and reported together. Loading
installs the tensors only when there is none: nothing half-loaded is ever returned.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .args import ConfigError, ModelArgs
from .checkpoint import Checkpoint, CheckpointError, Problem, remedy
from .layouts import Layout, Match, internal_to_official, official_to_hf, official_to_internal, recognise, spell
from .model import Transformer
from .safetensors_mmap import DTYPE_NAMES

__all__ = ["Checkpoint", "CheckpointError", "Reading", "internal_to_official", "load_model", "official_to_hf",
           "official_to_internal", "read_checkpoint", "survey"]

FLOAT_DTYPES = {"F32", "BF16", "F16", "F64"}
FP8_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "scale_fmt": "ue8m0",
              "weight_block_size": [128, 128]}
Source = Callable[[], torch.Tensor]


@dataclass
class Tensor:
    """A model buffer's tensor as found in the checkpoint: how to read it, and what the header says."""

    read: Source
    shape: list[int]
    dtype: str
    name: str  # the checkpoint's own name (a fused tensor for transformers' routed experts)
    file: str


@dataclass
class Reading:
    """A checkpoint folder read against the model it describes (headers only; no tensor data is touched)."""

    path: Path
    args: ModelArgs  # config.json with the storage formats and the MTP block as found on disk
    ckpt: Checkpoint
    match: Match  # the layout recognised (the best of `recognise`)
    dense_fmt: str  # "fp8" | "float": attention, shared expert, MTP projections
    expert_fmt: str  # "fp4" | "fp8" | "float": the routed experts
    model: Transformer | None = None  # on the meta device (read_checkpoint; `survey` leaves it out)
    sources: dict[str, Tensor] = field(default_factory=dict)  # internal buffer name -> its tensor
    problems: list[Problem] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return self.match.layout

    def error(self) -> CheckpointError:
        summary = f"cannot load the checkpoint at {self.path}"
        if any(p.kind == "tensor" for p in self.problems):
            summary += (f" (its names look closest to the {self.layout.title} layout: {self.match.recognised} "
                        f"of {len(self.ckpt.names()) + len(self.ckpt.lost)} recognised)")
        return CheckpointError(summary, self.problems, remedy(self.path, self.problems))


def survey(path: str | Path) -> Reading:
    """The layout, storage formats and on-disk config of a checkpoint folder, from its headers alone (no model
    is built and nothing is checked against one: `read_checkpoint` does that). Raises CheckpointError only for a
    folder that cannot be read at all (no folder, no config.json, no shards, a broken index)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    try:
        args = ModelArgs.from_file(path)
    except ConfigError as e:
        raise CheckpointError(f"cannot load the checkpoint at {path}: {e}",
                              remedy=remedy(path, [Problem(str(e), "config.json", "config")])) from None
    ckpt = Checkpoint(path, strict=False)
    match = recognise([*ckpt.names(), *ckpt.lost])[0]  # what an unreadable shard holds counts as present
    dense_fmt, expert_fmt = storage(ckpt, match, args)
    return Reading(path, on_disk_args(args, match, dense_fmt), ckpt, match, dense_fmt, expert_fmt,
                   problems=list(ckpt.problems))


def read_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, simulate_quant: bool = True) -> Reading:
    """`survey`, then every tensor checked against the model it describes (built on the meta device);
    problems are collected in `Reading.problems`, not raised."""
    r = survey(path)
    with torch.device("meta"):
        r.model = Transformer(r.args, simulate_quant, dtype, expert_fmt=r.expert_fmt)
    _map(r)
    return r


# ---- storage formats and the model they imply ------------------------------------------------------------
def _first_dtype(ckpt: Checkpoint, match: Match, pattern: str) -> str | None:
    rx = re.compile(pattern)
    return next((ckpt.dtype_name(n) for n, off in match.names.items() if n in ckpt.where and rx.search(off)), None)


def storage(ckpt: Checkpoint, match: Match, args: ModelArgs) -> tuple[str, str]:
    """(dense format, routed-expert format) as stored; the config's where the checkpoint does not say."""
    dt = _first_dtype(ckpt, match, r"attn\.wq_a\.weight$")
    dense = "fp8" if dt == "F8_E4M3" else "float" if dt in FLOAT_DTYPES else ("fp8" if args.fp8_weights else "float")
    if match.fused:
        return dense, "float"  # transformers keeps its fused experts as floats
    dt = _first_dtype(ckpt, match, r"\.ffn\.experts\.\d+\.w1\.weight$")
    expert = {"I8": "fp4", "F8_E4M3": "fp8"}.get(dt or "", "float" if dt in FLOAT_DTYPES else "")
    return dense, expert or ("fp4" if args.fp4_experts else dense)


def on_disk_args(args: ModelArgs, match: Match, dense_fmt: str) -> ModelArgs:
    """`args` with the dense format found on disk (a float re-export may keep its FP8 quantization_config)
    and without the MTP block where a transformers layout left it out."""
    changes: dict = {}
    if (dense_fmt == "fp8") != args.fp8_weights:
        changes["quantization_config"] = dict(FP8_CONFIG) if dense_fmt == "fp8" else None
    if match.layout.mtp_optional and args.num_nextn_predict_layers and not any(
            off.startswith("mtp.") for off in match.names.values()):
        changes.update(num_nextn_predict_layers=0, compress_ratios=args.compress_ratios[: args.num_hidden_layers])
    return dataclasses.replace(args, **changes) if changes else args


# ---- mapping checkpoint tensors onto the model -----------------------------------------------------------
def _map(r: Reading) -> None:
    """Fill `r.sources` and add every missing, unexpected, mis-shaped or mis-typed tensor to `r.problems`."""
    ckpt, match, args = r.ckpt, r.match, r.args
    assert r.model is not None
    expected = dict(r.model.named_buffers())
    unexpected = [n for n in match.unknown if n not in ckpt.lost]
    covered: set[str] = set()  # buffers held by an unreadable shard: its one problem line covers them
    for name, off in match.names.items():
        internal = official_to_internal(off)
        if name in ckpt.lost:
            covered.add(internal)
        elif internal in expected:
            r.sources[internal] = Tensor(lambda n=name: ckpt.tensor(n), ckpt.shape(name), ckpt.dtype_name(name),
                                         name, ckpt.where[name])
        else:
            unexpected.append(name)
    for name, (layer, kind) in match.fused.items():
        if name in ckpt.lost:
            covered |= {k for k in expected if re.match(rf"layers\.{layer}\.ffn\.experts\.\d+\.w", k)}
            continue
        shape, dt, file = ckpt.shape(name), ckpt.dtype_name(name), ckpt.where[name]
        if f"layers.{layer}.ffn.experts.0.w2.weight" not in expected:
            unexpected.append(name)
            continue
        if len(shape) != 3 or shape[0] != args.n_routed_experts:
            r.problems.append(Problem(f"{name}: shape {shape} is not [n_routed_experts={args.n_routed_experts}, ...]",
                                      file))
            continue
        for e in range(shape[0]):
            prefix = f"layers.{layer}.ffn.experts.{e}"
            if kind == "down_proj":
                r.sources[f"{prefix}.w2.weight"] = Tensor(lambda n=name, e=e: ckpt.tensor(n)[e], shape[1:], dt,
                                                          name, file)
                continue
            half = shape[1] // 2
            for w, sl in (("w1", slice(0, half)), ("w3", slice(half, None))):
                r.sources[f"{prefix}.{w}.weight"] = Tensor(lambda n=name, e=e, sl=sl: ckpt.tensor(n)[e, sl],
                                                           [half, shape[2]], dt, name, file)
    missing = sorted(set(expected) - set(r.sources) - covered)
    if missing and ckpt.unreadable and not ckpt.indexed:  # no index to say which file held what
        r.problems.append(Problem(f"{len(missing)} of the model's tensors are not in the readable files "
                                  "(the damaged files listed may hold them)"))
        missing = []
    for name in missing:
        spelled = spell(r.layout, internal_to_official(name)) or (f"{internal_to_official(name)} (fused)",)
        r.problems.append(Problem(f"missing tensor {spelled[0]} (shape {list(expected[name].shape)})"))
    for name in unexpected:
        r.problems.append(Problem(f"unexpected tensor {name}", ckpt.where[name]))
    for internal, t in r.sources.items():
        if (msg := _check(expected[internal], t)) is not None:
            r.problems.append(Problem(f"{t.name}: {msg}", t.file))


def _check(want: torch.Tensor, t: Tensor) -> str | None:
    if list(want.shape) != list(t.shape):
        return f"shape {t.shape}, expected {list(want.shape)}"
    if want.dtype.is_floating_point and want.dtype not in (torch.float8_e4m3fn, torch.float8_e8m0fnu):
        if t.dtype not in FLOAT_DTYPES:
            return f"dtype {t.dtype}, expected a float type"
    elif want.dtype == torch.int64:
        if t.dtype not in ("I64", "I32"):
            return f"dtype {t.dtype}, expected I64"
    elif t.dtype != DTYPE_NAMES[want.dtype]:
        return f"dtype {t.dtype}, expected {DTYPE_NAMES[want.dtype]}"
    return None


# Kept as stored (BF16, or FP32 in a float re-export) whatever the model's dtype. Each one's product accumulates in
# FP32 from FP32 inputs, and widening BF16 is exact, so the results are those of an FP32 copy: the embedding (a row
# per token), the head, the compressors' wkv/wgate (the reference runs them in FP32) and the router (FP32 scores).
# Widening them at load would only double the bytes each decode step reads (at V4-Flash's widths ~0.5 GB a token).
STORED_PRECISION = frozenset({"embed.weight", "head.weight"})
STORED_SUFFIXES = ("compressor.wkv.weight", "compressor.wgate.weight", "ffn.gate.weight")


def kept_as_stored(name: str) -> bool:
    """Whether the model holds this buffer (one of our names) in the precision the checkpoint stores it."""
    return name in STORED_PRECISION or name.endswith(STORED_SUFFIXES)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               simulate_quant: bool = True) -> Transformer:
    """Load a DeepSeek-V4 checkpoint folder, in any layout of runtime/layouts.py, into a `Transformer`."""
    r = read_checkpoint(path, dtype, simulate_quant)
    if not r.problems and r.model is not None:
        expected = dict(r.model.named_buffers())
        for name, t in expected.items():
            if t.dtype == torch.float8_e8m0fnu and bool((r.sources[name].read().view(torch.uint8) == 255).any()):
                src = r.sources[name]
                r.problems.append(Problem(f"{src.name}: holds NaN scale bytes (0xFF): corrupt data", src.file, "file"))
    if r.problems:
        raise r.error()
    model = r.model
    assert model is not None
    for name, want in dict(model.named_buffers()).items():
        t = r.sources[name].read()
        if kept_as_stored(name) and t.dtype in (torch.float32, torch.bfloat16):
            t = t.to(device)
        elif want.dtype.is_floating_point and want.dtype not in (torch.float8_e4m3fn, torch.float8_e8m0fnu):
            t = t.to(device=device, dtype=want.dtype)
        else:
            t = t.to(device=device, dtype=want.dtype) if t.dtype != want.dtype else t.to(device)
        mod_name, _, buf = name.rpartition(".")
        model.get_submodule(mod_name)._buffers[buf] = t
    model.eval()
    return model
