"""Interleaved partial RoPE on the last `rope_dim` dims, with YaRN on compressed layers only."""

from __future__ import annotations

import math

import torch

from .. import ops


def yarn_bounds(dim: int, base: float, orig: int, beta_fast: float, beta_slow: float) -> tuple[int, int]:
    """The YaRN correction range [low, high] over the dim/2 frequency indices (architecture.md §2.4)."""

    def corr(rot: float) -> float:
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    return max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), dim - 1)


def rope_frequencies(dim: int, base: float, yarn: dict[str, float] | None) -> torch.Tensor:
    """theta_i = base^(-2i/dim), blended towards theta_i/factor by the YaRN ramp when `yarn` is given."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
    if yarn and yarn["original_seq_len"] > 0:
        low, high = yarn_bounds(dim, base, yarn["original_seq_len"], yarn["beta_fast"], yarn["beta_slow"])
        span = (high - low) if high != low else 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / span).clamp(0, 1)
        freqs = freqs / yarn["factor"] * ramp + freqs * (1 - ramp)
    return freqs


class Rope:
    """cos/sin at arbitrary absolute positions (no table: contexts reach 1M tokens)."""

    def __init__(self, dim: int, base: float, yarn: dict[str, float] | None) -> None:
        self.dim = dim
        self.freqs = rope_frequencies(dim, base, yarn)
        self._on: dict[torch.device, torch.Tensor] = {}  # the frequencies where the positions are (one copy each)
        self._last: tuple[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] | None = None

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = self._on.get(positions.device)
        if freqs is None:
            freqs = self._on[positions.device] = self.freqs.to(positions.device)
        ang = positions.to(torch.float32).unsqueeze(-1) * freqs
        return ang.cos(), ang.sin()

    def angles_at(self, start: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The angles of positions start..start+n-1. The last call's are kept: every layer of a step that shares
        this table (make_rope) asks for the same positions, and only the first computes them."""
        key = (start, n, device)
        if self._last is None or self._last[0] != key:
            self._last = (key, self.angles(torch.arange(start, start + n, device=device)))
        return self._last[1]

    def apply(self, x: torch.Tensor, cs: tuple[torch.Tensor, torch.Tensor], inverse: bool = False) -> torch.Tensor:
        """Rotate the last `dim` dims of x [T, ..., D] by its row's angles (cos/sin [T, dim/2])."""
        return ops.rope(x, cs[0], cs[1], inverse)
