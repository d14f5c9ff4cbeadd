"""What the CUDA kernel tests share: the kernels installed for a module's tests, and the relative error of a
result against a float64 reference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from v4cli.runtime import kernels, ops


@pytest.fixture(scope="module", autouse=True)
def installed() -> Iterator[None]:
    line = kernels.install("cuda")
    assert "CUDA kernels:" in line, line
    yield
    ops.reset()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64; a NaN anywhere in got fails."""
    assert not got.isnan().any()
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
