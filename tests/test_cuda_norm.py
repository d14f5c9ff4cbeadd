"""The CUDA rms_norm and hc_post against their twins (run where a CUDA device is; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from cudakit import installed, rel  # noqa: F401 (installed: an autouse fixture)
from v4cli.runtime import cuda_kernels, ops, ops_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 4096), (32, 4096), (2048, 1024), (3, 64, 512), (5, 7168), (1, 37)])
def test_rms_norm(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = (torch.randn(*shape, device="cuda") * 3).to(dtype)
    w = torch.rand(shape[-1], device="cuda") + 0.5
    got = cuda_kernels.rms_norm(x, w, 1e-6)
    want = ops_ref.rms_norm(x.double(), w.double(), 1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,d", [(1, 4096), (32, 4096), (1024, 7168), (3, 64)])
def test_hc_post(dtype: torch.dtype, tokens: int, d: int) -> None:
    n = 4
    x = torch.randn(tokens, n, d, device="cuda").to(dtype)
    o = torch.randn(tokens, d, device="cuda").to(dtype)
    post = torch.rand(tokens, n, device="cuda") * 2
    comb = torch.rand(tokens, n, n, device="cuda").softmax(-1)
    got = cuda_kernels.hc_post(o, x, post, comb)
    want = ops_ref.hc_post(o.double(), x.double(), post.double(), comb.double())
    assert got.dtype == dtype and got.shape == x.shape
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_the_seam_routes_cuda_tensors_here_and_cpu_tensors_elsewhere() -> None:
    assert ops.backend("rms_norm", "cuda") == cuda_kernels.__name__
    x, w = torch.randn(4, 64), torch.rand(64)
    assert ops.rms_norm(x, w, 1e-6).device.type == "cpu"  # the CPU's kernel or twin, never the CUDA one
    assert ops.rms_norm(x.cuda(), w.cuda(), 1e-6).device.type == "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,d", [(1, 4096), (32, 4096), (512, 4096), (3, 64)])
def test_hc_pre(dtype: torch.dtype, tokens: int, d: int) -> None:
    if ops.backend("hc_sinkhorn", "cuda") == "torch":
        pytest.skip("hc_sinkhorn has no CUDA kernel: hc_pre runs its twin")
    n = 4
    mix = (2 + n) * n
    x = torch.randn(tokens, n, d, device="cuda").to(dtype)
    fn, base = torch.randn(mix, n * d, device="cuda") * 0.02, torch.randn(mix, device="cuda")
    scale = torch.rand(3, device="cuda") + 0.5
    got = cuda_kernels.hc_pre(x, fn, scale, base, n, 20, 1e-6, 1e-6)
    want = ops_ref.hc_pre(x.double(), fn.double(), scale.double(), base.double(), n, 20, 1e-6, 1e-6)
    assert got[0].dtype == dtype and got[0].shape == (tokens, d)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and rel(a, b) < (1e-4 if dtype == torch.float32 else 1e-2)
