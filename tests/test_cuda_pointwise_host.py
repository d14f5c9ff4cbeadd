"""The row-wise CUDA kernels (csrc/cuda/pointwise.cu, rounding.cu) without a GPU: compiled with g++ against a CUDA
stand-in (tests/cuda/emu: each warp's lanes run as fibers that meet at every shuffle) and run through their
launchers by tests/cuda/pointwise_host.cpp, so that the index math, the shuffles' partners, the vector paths and
the fallbacks for odd widths and unaligned rows are checked here: the roundings bit for bit with the twins, the
rest to 1e-5 (float32) or 1e-2 (bfloat16) of a float64 reference."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cudakit import rel
from v4cli.runtime import ops_ref
from v4cli.runtime.kernel_build import CSRC

CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = [pytest.mark.skipif(CXX is None, reason="no C++ compiler"),
              pytest.mark.skipif(sys.platform != "linux", reason="the stand-in's fibers are glibc's ucontext")]
HERE = Path(__file__).parent / "cuda"
LAUNCH = re.compile(r"<<<(.*?)>>>\(", re.S)


def _split_top(text: str) -> list[str]:
    """text's comma-separated parts, commas inside brackets kept."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([<{"
        depth -= ch in ")]>}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()]


def emulated(source: str) -> str:
    """Every `kernel<...><<<grid, block, ...>>>(args)` as `::emu::launcher(&kernel<...>, grid, block)(args)`."""
    out, pos = "", 0
    for m in LAUNCH.finditer(source):
        start = m.start()
        if source[start - 1] == ">":  # the kernel's template arguments, matched backwards
            depth, start = 0, start - 1
            while True:
                depth += {">": 1, "<": -1}.get(source[start], 0)
                if depth == 0:
                    break
                start -= 1
        while source[start - 1].isalnum() or source[start - 1] == "_":
            start -= 1
        grid, block = _split_top(m.group(1))[:2]
        out += source[pos:start] + f"::emu::launcher(&{source[start:m.start()]}, {grid}, {block})("
        pos = m.end()
    return out + source[pos:]


def test_the_rewrite_keeps_template_arguments_and_the_launch_shape() -> None:
    src = "f<T, kVec><<<blocks_for(n / kVec, 128), kThreads, 0, stream>>>(x, y);"
    assert emulated(src) == "::emu::launcher(&f<T, kVec>, blocks_for(n / kVec, 128), kThreads)(x, y);"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pointwise")
    sources = []
    for name in ("pointwise.cu", "rounding.cu"):
        text = (CSRC / "cuda" / name).read_text()
        assert LAUNCH.search(text), name
        (tmp / f"{name}.cpp").write_text(emulated(text))
        sources.append(str(tmp / f"{name}.cpp"))
    exe = tmp / "pointwise_host"
    # no FMA contraction: the kernels' separately rounded products, as nvcc keeps them with the _rn intrinsics
    r = subprocess.run([CXX, "-std=c++17", "-O1", "-ffp-contract=off", "-Wno-unknown-pragmas",
                        "-include", str(HERE / "emu" / "emu.h"), f"-I{HERE / 'emu'}", f"-I{CSRC / 'cuda'}", *sources,
                        str(HERE / "pointwise_host.cpp"), "-o", str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run(exe: Path, mode: str, inputs: list[torch.Tensor], *args: object) -> torch.Tensor:
    src, dst = exe.parent / f"{mode}.in", exe.parent / f"{mode}.out"
    src.write_bytes(b"".join(t.float().contiguous().numpy().tobytes() for t in inputs))
    r = subprocess.run([str(exe), mode, str(src), str(dst), *map(str, args)], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return torch.frombuffer(bytearray(dst.read_bytes()), dtype=torch.float32)


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2


@pytest.mark.parametrize("n,rows", [(4, 1), (4, 13), (2, 9), (1, 3), (3, 5), (8, 4)])
def test_hc_sinkhorn(host: Path, n: int, rows: int) -> None:
    g = torch.Generator().manual_seed(n * 100 + rows)
    mixes = torch.randn(rows, (2 + n) * n, generator=g) * 0.5
    scale, base = torch.rand(3, generator=g) + 0.5, torch.randn((2 + n) * n, generator=g) * 0.5
    got = _run(host, "sinkhorn", [mixes, scale, base], rows, n, 20, 1e-6)
    want = ops_ref.hc_sinkhorn(mixes.double(), scale.double(), base.double(), n, 20, 1e-6)
    assert got.numel() == rows * (2 * n + n * n)
    for g_, w in zip(got.split([rows * n, rows * n, rows * n * n]), want, strict=True):
        assert rel(g_, w.flatten()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,half,inverse,misalign", [
    ((3, 4, 512), 32, False, 0),  # the queries' widths, a vector a thread
    ((2, 512), 32, True, 0),
    ((4, 2, 100), 16, False, 0),  # nope 68: pairs for bf16
    ((5, 3, 37), 9, True, 0),  # odd widths: a value a thread
    ((3, 2, 64), 32, False, 1),  # x one value past alignment: a value a thread
    ((3, 2, 64), 32, True, 2),  # two values past: pairs
    ((2, 64), 32, True, 0),  # every dim rotated
])
def test_rope(host: Path, dtype: torch.dtype, shape: tuple[int, ...], half: int, inverse: bool,
              misalign: int) -> None:
    g = torch.Generator().manual_seed(sum(shape) + half)
    x = torch.randn(*shape, generator=g).to(dtype)
    ang = torch.randint(0, 1 << 20, (shape[0], 1), generator=g).float() * torch.rand(half, generator=g)
    cos, sin = ang.cos(), ang.sin()
    per_row = x[0].numel() // shape[-1]
    got = _run(host, "rope", [x, cos, sin], shape[0], per_row, shape[-1], half, int(inverse),
               int(dtype == torch.bfloat16), misalign).view(shape)
    want = ops_ref.rope(x.double(), cos.double(), sin.double(), inverse)
    assert rel(got, want) < _tol(dtype)
    assert torch.equal(got.to(dtype), ops_ref.rope(x, cos, sin, inverse))  # the CPU twin's roundings, exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,d", [(5, 128), (3, 64), (2, 256), (1, 1024), (3, 32), (5, 16), (4, 2), (3, 1)])
def test_hadamard(host: Path, dtype: torch.dtype, rows: int, d: int) -> None:
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(d + rows)).to(dtype)
    got = _run(host, "hadamard", [x], rows, d, int(dtype == torch.bfloat16)).view(rows, d)
    assert rel(got, ops_ref.hadamard(x.double())) < _tol(dtype)
    assert torch.equal(got.to(dtype), ops_ref.hadamard(x))


def _awkward(rows: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, d, generator=g) * torch.exp2(torch.randint(-12, 8, (rows, 1), generator=g).float())
    x[0, :32] = 0
    x[-1, : min(64, d)] *= 1e-7
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,d,block,width,misalign", [
    (5, 512, 64, 448, 0),  # the kv rows
    (4, 128, 64, 64, 0), (3, 256, 64, 192, 0), (3, 512, 128, 384, 0), (4, 96, 64, 64, 0),
    (3, 100, 32, 64, 0),  # no 16-byte vectors: a thread per block
    (2, 512, 256, 256, 0),  # blocks past a warp's vectors
    (3, 24, 8, 16, 0), (2, 64, 64, 0, 0), (3, 128, 64, 128, 1),
])
def test_fp8_round(host: Path, dtype: torch.dtype, rows: int, d: int, block: int, width: int, misalign: int) -> None:
    x = _awkward(rows, d, dtype, d + block + width)
    got = _run(host, "fp8", [x], rows, d, width, block, int(dtype == torch.bfloat16), misalign).view(rows, d)
    want = ops_ref.fp8_round(x, block, width)
    assert torch.equal(got.view(torch.int32), want.float().view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,d,block,misalign", [(5, 128, 32, 0), (3, 64, 32, 0), (4, 96, 16, 0), (3, 40, 4, 0),
                                                   (2, 256, 256, 0), (3, 128, 32, 1)])
def test_fp4_round(host: Path, dtype: torch.dtype, rows: int, d: int, block: int, misalign: int) -> None:
    x = _awkward(rows, d, dtype, d + block)
    got = _run(host, "fp4", [x], rows, d, block, int(dtype == torch.bfloat16), misalign).view(rows, d)
    want = ops_ref.fp4_round(x, block)
    assert torch.equal(got.view(torch.int32), want.float().view(torch.int32))


def test_nan_and_inf_blocks(host: Path) -> None:
    x = torch.randn(4, 128)
    x[1, 3] = float("nan")
    y = x.clone()
    y[2, 70] = float("inf")
    for mode, inp, want, args in (("fp8", y, ops_ref.fp8_round(y, 64), (4, 128, 128, 64, 0, 0)),
                                  ("fp4", x, ops_ref.fp4_round(x, 32), (4, 128, 32, 0, 0))):
        got = _run(host, mode, [inp], *args).view(4, 128)
        assert torch.equal(got.isnan(), want.isnan()), mode
        assert torch.equal(got[want.isfinite()], want[want.isfinite()]), mode
