"""Element-wise functions whose value at an element does not depend on the size of the tensor it is in.

torch.sigmoid, F.silu and F.softplus run a vectorised loop (SLEEF's exp) over most of a tensor and a
scalar loop (libm's exp) over its tail, so an element's value can change by an ulp with the number of
rows around it: a router's scores for one token moved when another token joined the batch. torch.exp
and torch.log1p evaluate every element with one vectorised routine, tail included, so these are built
on them (tests/test_batch_invariance.py checks it). They differ from torch's own by at most an ulp or two.
"""

from __future__ import annotations

import torch


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(torch.exp(-x).add_(1))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / torch.exp(-x).add_(1)


def softplus(x: torch.Tensor, threshold: float = 20.0) -> torch.Tensor:
    """log(1 + e^x), and x itself above `threshold` (as F.softplus)."""
    return torch.where(x > threshold, x, torch.log1p(torch.exp(x)))
