"""The moe_experts kernels' bit-level weight decoding and fragment layouts without a GPU (csrc/cuda/moe.cuh, run as
host code by tests/cuda/moe_host.cu): the prefill path's FP4/FP8 decoders equal runtime/quant.py's dequantization
rounded to bfloat16, bit for bit; one step of the decode path's warp -- 32 lanes' MMA operands put through an
emulated m16n8k16 as PTX lays out its fragments -- computes the dequantized weights times the activations; and
the prefill block's ldmatrix addressing and warp placement give A B^T for a K tile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from v4cli.runtime import cuda_kernels, quant
from v4cli.runtime.kernel_build import CSRC

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


@pytest.fixture(scope="module")
def moe_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("moe") / "moe_host"
    src = Path(__file__).parent / "cuda" / "moe_host.cu"
    # the header's device code (bf16x2 multiplies, MMAs) needs Hopper's PTX even though only host code runs
    r = subprocess.run([NVCC, "-std=c++17", *cuda_kernels.arch_flags((9, 0)), f"-I{CSRC / 'cuda'}", str(src), "-o",
                        str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run(exe: Path, mode: str, data: bytes) -> torch.Tensor:
    src, dst = exe.parent / f"{mode}.in", exe.parent / f"{mode}.out"
    src.write_bytes(data)
    r = subprocess.run([str(exe), mode, str(src), str(dst)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return torch.frombuffer(bytearray(dst.read_bytes()), dtype=torch.float32)


def _bits_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    want = want.float().flatten()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    g, w = got[~nan].view(torch.int32), want[~nan].view(torch.int32)
    bad = (g != w).nonzero().flatten()
    first = int(bad[0]) if bad.numel() else 0
    assert bad.numel() == 0, f"{bad.numel()} differ, first at {first}: {got[~nan][first]} vs {want[~nan][first]}"


def _scales(b: torch.Tensor) -> torch.Tensor:
    return b.to(torch.uint8).view(torch.float8_e8m0fnu).float()  # 255: NaN, as the kernels read it


def _e4m3_bytes(n: int, g: torch.Generator) -> torch.Tensor:
    b = torch.randint(0, 256, (n,), generator=g, dtype=torch.int64)
    return torch.where((b & 0x7F) == 0x7F, b & 0x7E, b).to(torch.uint8)  # no NaN codes (never in a checkpoint)


def test_fp4_natural_decoding_is_the_dequantized_weight(moe_host: Path) -> None:
    g = torch.Generator().manual_seed(0)
    words = torch.randint(0, 2**32, (4096,), generator=g, dtype=torch.int64)
    scales = torch.arange(4096) % 256  # every scale byte, the two-factor ones (> 128) and NaN included
    data = words.to(torch.int32).numpy().tobytes() + scales.to(torch.uint8).numpy().tobytes()
    got = _run(moe_host, "fp4_natural", data)
    codes = torch.stack([(words >> (4 * i)) & 15 for i in range(8)], dim=1)
    want = (quant.e2m1_decode(codes) * _scales(scales)[:, None]).to(torch.bfloat16)
    _bits_equal(got, want)


def test_fp8_natural_decoding_is_the_dequantized_weight(moe_host: Path) -> None:
    g = torch.Generator().manual_seed(1)
    b = _e4m3_bytes(4 * 4096, g)
    scales = torch.arange(4096) % 256
    got = _run(moe_host, "fp8_natural", b.numpy().tobytes() + scales.to(torch.uint8).numpy().tobytes())
    want = (b.view(torch.float8_e4m3fn).float().view(4096, 4) * _scales(scales)[:, None]).to(torch.bfloat16)
    _bits_equal(got, want)


GROUP = {"fp4": 32, "fp8": 16, "bf16": 8}  # elements per lane's 16-byte piece


@pytest.mark.parametrize("fmt", ["fp4", "fp8", "bf16"])
@pytest.mark.parametrize("big_scale", [False, True])
def test_a_decode_warp_step_multiplies_the_weights(moe_host: Path, fmt: str, big_scale: bool) -> None:
    """16 rows x 64 bytes of weights (4 lanes' pieces each), 8 tokens: C = W x^T over the step's elements."""
    g = torch.Generator().manual_seed(2 + big_scale)
    n = 4 * GROUP[fmt]  # elements per row in the step
    lo, hi = (125, 135) if big_scale else (110, 126)  # past 128 (FP4) / 134 (FP8): the two-factor multiply
    if fmt == "fp4":
        w = torch.randint(0, 256, (16, 64), generator=g, dtype=torch.int64).to(torch.uint8)
        s = torch.randint(lo, hi, (16, 4), generator=g, dtype=torch.int64).to(torch.uint8)
        dense = quant.dequant_fp4(w.view(torch.int8), s.view(torch.float8_e8m0fnu))
        extra = s.numpy().tobytes()
    elif fmt == "fp8":
        w = _e4m3_bytes(16 * 64, g).view(16, 64)
        s = torch.randint(lo + 6, hi + 6, (1,), generator=g, dtype=torch.int64).to(torch.uint8)
        dense = w.view(torch.float8_e4m3fn).float() * _scales(s)
        extra = s.numpy().tobytes()
    else:
        wf = torch.randn(16, n, generator=g).to(torch.bfloat16)
        w, dense, extra = wf.view(torch.uint8), wf.float(), b""
    x = torch.randn(8, n, generator=g).to(torch.bfloat16)
    got = _run(moe_host, f"gemv_{fmt}", w.numpy().tobytes() + extra + x.view(torch.uint8).numpy().tobytes())
    want = dense.double() @ x.double().t()
    assert want.abs().max() > 0
    torch.testing.assert_close(got.view(16, 8).double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_a_prefill_k_tile_is_a_times_b_transposed(moe_host: Path) -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(128, 32, generator=g).to(torch.bfloat16), torch.randn(128, 32, generator=g).to(torch.bfloat16)
    got = _run(moe_host, "gemm_tile", a.view(torch.uint8).numpy().tobytes() + b.view(torch.uint8).numpy().tobytes())
    want = a.double() @ b.double().t()
    torch.testing.assert_close(got.view(128, 128).double(), want, rtol=1e-5, atol=1e-5)
