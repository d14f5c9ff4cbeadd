"""One decode step of one layer at the real widths: a CSA (ratio 4) or HCA (ratio 128) `Block` with random
weights in the checkpoint's formats, made on the device, and decode states filled as a prefill of `ctx` tokens
would leave them (ring full, ctx/ratio entries closed, the compressors' last window kept), then timed for one
token of each of B sequences, against the floor of the bytes the step must read."""

from __future__ import annotations

import math
from typing import Any

import torch

from v4cli.runtime import quant
from v4cli.runtime.args import ModelArgs
from v4cli.runtime.cache import CompressorState, LayerState, Rows
from v4cli.runtime.model.linear import Linear
from v4cli.runtime.model.model import Block

from .common import Bench, Ceilings, nbytes


def build_block(args: ModelArgs, layer: int, device: torch.device, dtype: torch.dtype, seed: int) -> Block:
    """The Block with every buffer drawn on the device: linears from Gaussians of std 1/sqrt(in), quantized to
    their format (FP8 tiles, FP4 experts); norms near 1; the mHC and router tensors as tiny.random_tensors."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device) * std

    with torch.device(device), torch.no_grad():
        blk = Block(args, layer, simulate_quant=True, dtype=dtype)
        for mod in blk.modules():
            if isinstance(mod, Linear):
                w = randn(mod.out_features, mod.in_features, std=mod.in_features**-0.5)
                if mod.fmt == "float":
                    mod.weight.copy_(w)
                else:
                    q, s = (quant.quantize_fp8 if mod.fmt == "fp8" else quant.quantize_fp4)(w)
                    mod.weight.copy_(q)
                    mod.scale.copy_(s)
        for name, buf in blk.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith(("weight", "scale")) and _is_linear(blk, name):
                continue
            if name.endswith("gate.weight"):
                buf.copy_(randn(*buf.shape, std=buf.shape[1] ** -0.5))
            elif leaf == "fn":
                buf.copy_(randn(*buf.shape, std=0.5 / math.sqrt(buf.shape[1])))
            elif leaf in ("base", "ape"):
                buf.copy_(randn(*buf.shape, std=0.5))
            elif leaf == "bias":
                buf.copy_(randn(*buf.shape, std=0.1))
            elif leaf == "scale":  # the mHC scales
                buf.copy_(0.5 + torch.rand(*buf.shape, generator=gen, device=device))
            elif leaf == "attn_sink":
                buf.copy_(randn(*buf.shape))
            elif leaf == "weight":  # RMSNorm
                buf.copy_(1.0 + randn(*buf.shape, std=0.1))
            else:
                raise AssertionError(f"no rule to fill {name}")
    return blk.eval()


def _is_linear(blk: Block, name: str) -> bool:
    return isinstance(blk.get_submodule(name.rsplit(".", 1)[0]), Linear)


def _compressor(ratio: int, d: int, ctx: int, dtype: torch.dtype, device: torch.device, g: torch.Generator
                ) -> CompressorState:
    """ctx // ratio closed entries (room for 64 more, so the timed steps do not regrow the buffer), the open
    window's ctx % ratio raw rows, and for CSA the last closed window's rows."""
    width = (2 if ratio == 4 else 1) * d

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    entries = Rows(d, dtype, device)
    n = ctx // ratio
    entries.append(randn(n + 64, d).to(dtype))
    entries.truncate(n)
    r = ctx % ratio
    overlap = ratio == 4 and n > 0
    return CompressorState(tail_kv=randn(r, width), tail_score=randn(r, width),
                           prev_kv=randn(ratio, width) if overlap else None,
                           prev_score=randn(ratio, width) if overlap else None, entries=entries)


def decode_states(args: ModelArgs, ratio: int, ctx: int, batch: int, dtype: torch.dtype, device: torch.device,
                  seed: int) -> list[LayerState]:
    g = torch.Generator(device=device).manual_seed(seed)
    states = []
    for _ in range(batch):
        st = LayerState(ring=torch.randn(args.sliding_window, args.head_dim, generator=g, device=device).to(dtype))
        st.comp = _compressor(ratio, args.head_dim, ctx, dtype, device, g)
        if ratio == 4:
            st.index = _compressor(ratio, args.index_head_dim, ctx, dtype, device, g)
        states.append(st)
    return states


def state_read(st: LayerState, args: ModelArgs, ratio: int) -> int:
    """Bytes of one sequence's state a decode step must read: the ring; for CSA every indexer key (all are
    scored) and the index_topk entries it picks; for HCA every entry; the compressors' open rows."""
    total = nbytes(st.ring)
    for c in (st.comp, st.index):
        if c is not None:
            total += nbytes(c.tail_kv, c.tail_score, c.prev_kv, c.prev_score)
    entries = st.comp.entries.view()
    if ratio == 4:
        total += nbytes(st.index.entries.view()) + min(args.index_topk, entries.shape[0]) * entries[0].nbytes
    else:
        total += nbytes(entries)
    return total


def weight_read(blk: Block, args: ModelArgs, batch: int) -> int:
    """Every weight of the layer but the routed experts, and those B tokens' top-k pick on average: the expected
    distinct experts, E (1 - (1 - k/E)^B)."""
    routed = sum(nbytes(b) for n, b in blk.named_buffers() if n.startswith("ffn.experts."))
    rest = sum(nbytes(b) for n, b in blk.named_buffers() if not n.startswith("ffn.experts."))
    E, k = args.n_routed_experts, args.num_experts_per_tok
    return rest + int(routed * (1 - (1 - k / E) ** batch))


def time_steps(blk: Block, args: ModelArgs, ratio: int, ctx: int, batch: int, dtype: torch.dtype, bench: Bench,
               ceil: Ceilings | None, steps: int, seed: int) -> dict[str, Any]:
    """ms per decode step (median of `steps` after warm-up), one token per sequence; the states advance a token
    a step (a new entry closes on the way, as in decoding)."""
    dev = bench.device
    states = decode_states(args, ratio, ctx, batch, dtype, dev, seed)
    pos = [ctx] * batch
    moved = weight_read(blk, args, batch) + sum(state_read(st, args, ratio) for st in states)
    x = torch.randn(batch, args.hc_mult, args.hidden_size, generator=torch.Generator(device=dev).manual_seed(seed),
                    device=dev).to(dtype)
    tokens = torch.zeros(batch, dtype=torch.long, device=dev)
    outs: list[torch.Tensor] = []

    @torch.inference_mode()
    def step() -> None:
        outs[:] = [blk(x, tokens, [(p, st, 1) for p, st in zip(pos, states, strict=True)])]
        for i in range(batch):
            pos[i] += 1

    ms = bench.time(step, reps=steps, warmup=2)
    rec: dict[str, Any] = {"layer": "CSA" if ratio == 4 else "HCA", "ratio": ratio, "ctx": ctx, "batch": batch,
                           "ms": ms, "moved": moved, "finite": bool(torch.isfinite(outs[0]).all())}
    if ceil is not None:
        rec["floor_ms"] = moved / ceil.copy_bw * 1e3
        rec["x_floor"] = ms / rec["floor_ms"]
    rec["ok"] = rec["finite"]
    return rec
