"""The linear ops' tensor-core path without a GPU (csrc/cuda/linear_tc.cu's grid run as host code by
tests/cuda/linear_host.cu, with the kernel's own addressing, split-K plan, decoders and MMA fragment layout):
it computes x W^T of the dequantized weights for FP8, FP4 and bfloat16 weights, N tails and split K included;
three bfloat16 planes carry a float32 input exactly; and a row's result does not depend on M, nor on whether
the splits are summed as partials or in turn."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from v4cli.runtime import cuda_kernels, quant
from v4cli.runtime.kernel_build import CSRC

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
FMT = {"fp8": 0, "fp4": 1, "bf16": 3}


@pytest.fixture(scope="module")
def linear_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("linear") / "linear_host"
    src = Path(__file__).parent / "cuda" / "linear_host.cu"
    r = subprocess.run([NVCC, "-std=c++17", "-O2", *cuda_kernels.arch_flags((9, 0)), f"-I{CSRC / 'cuda'}", str(src),
                        "-o", str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _weight(fmt: str, n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, bytes]:
    """(the dequantized weight in float64, its bytes then its scale's)."""
    w = torch.randn(n, k, generator=g) * k**-0.5
    if fmt == "fp8":
        q, s = quant.quantize_fp8(w)
        return quant.dequant_fp8(q, s, torch.float64), q.view(torch.uint8).numpy().tobytes() + s.view(
            torch.uint8).numpy().tobytes()
    if fmt == "fp4":
        q, s = quant.quantize_fp4(w)
        return quant.dequant_fp4(q, s, torch.float64), q.view(torch.uint8).numpy().tobytes() + s.view(
            torch.uint8).numpy().tobytes()
    wb = w.to(torch.bfloat16)
    return wb.double(), wb.view(torch.uint8).numpy().tobytes()


def _planes(x: torch.Tensor, planes: int) -> torch.Tensor:
    """The prep kernel's split: bfloat16 parts summing to x (exactly, for three)."""
    hi = x.to(torch.bfloat16)
    if planes == 1:
        return hi[None]
    r = x - hi.float()
    mid = r.to(torch.bfloat16)
    return torch.stack([hi, mid, (r - mid.float()).to(torch.bfloat16)])


def _run(exe: Path, fmt: str, wbytes: bytes, n: int, k: int, xp: torch.Tensor,
         serial: bool = False) -> tuple[torch.Tensor, list[int]]:
    m = xp.shape[1]
    hdr = np.array([FMT[fmt], n, k, m, xp.shape[0], int(serial)], dtype=np.int32).tobytes()
    src, dst = exe.parent / "in.bin", exe.parent / "out.bin"
    src.write_bytes(hdr + wbytes + xp.contiguous().view(torch.uint8).numpy().tobytes())
    r = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = bytearray(dst.read_bytes())
    y = torch.frombuffer(out[: 4 * m * n], dtype=torch.float32).view(m, n)
    return y.clone(), np.frombuffer(bytes(out[4 * m * n :]), dtype=np.int32).tolist()


@pytest.mark.parametrize("fmt,n,k,m", [("fp8", 200, 320, 5), ("fp8", 64, 512, 40), ("fp4", 130, 256, 3),
                                       ("fp4", 16, 1024, 9), ("bf16", 77, 96, 17), ("bf16", 24, 4096, 1)])
def test_the_grid_computes_x_w_transposed(linear_host: Path, fmt: str, n: int, k: int, m: int) -> None:
    g = torch.Generator().manual_seed(n * k + m)
    w, wbytes = _weight(fmt, n, k, g)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    y, (splits, per, _) = _run(linear_host, fmt, wbytes, n, k, _planes(x.float(), 1))
    want = x.double() @ w.t()
    assert splits * per >= k // {"fp8": 64, "fp4": 128, "bf16": 32}[fmt] > (splits - 1) * per
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_three_planes_carry_a_float32_input(linear_host: Path) -> None:
    g = torch.Generator().manual_seed(7)
    w, wbytes = _weight("bf16", 48, 256, g)
    x = torch.randn(4, 256, generator=g) * torch.exp2(torch.randint(-8, 8, (4, 1), generator=g).float())
    xp = _planes(x, 3)
    assert torch.equal(xp[0].double() + xp[1].double() + xp[2].double(), x.double())
    y, _ = _run(linear_host, "bf16", wbytes, 48, 256, xp)
    want = x.double() @ w.t()
    assert ((y.double() - want).norm() / want.norm()).item() < 1e-6


def test_a_row_does_not_depend_on_the_others(linear_host: Path) -> None:
    g = torch.Generator().manual_seed(8)
    w, wbytes = _weight("fp8", 96, 1024, g)
    x = torch.randn(40, 1024, generator=g).to(torch.bfloat16)
    full, (_, _, tiles) = _run(linear_host, "fp8", wbytes, 96, 1024, _planes(x.float(), 1))
    assert tiles == 8
    for rows in (1, 3, 9, 33):
        part, _ = _run(linear_host, "fp8", wbytes, 96, 1024, _planes(x[-rows:].float(), 1))
        assert torch.equal(part, full[-rows:])
    serial, (splits, _, _) = _run(linear_host, "fp8", wbytes, 96, 1024, _planes(x.float(), 1), serial=True)
    assert splits > 1 and torch.equal(serial, full)  # the splits summed in turn: the partials' sum, bit for bit
