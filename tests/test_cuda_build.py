"""The CUDA kernels without a GPU: every .cu compiles for Hopper (sm_90a) with this machine's nvcc, the binding
compiles against torch's headers, the build table names every source, and the GPU's number formats
(csrc/cuda/quant.cuh), run as host code, equal runtime/quant.py bit for bit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from v4cli.runtime import cuda_kernels, quant
from v4cli.runtime.kernel_build import CSRC

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
CUDA_DIR = CSRC / "cuda"
HOPPER = cuda_kernels.arch_flags((9, 0))
TORCH_INCLUDES = re.compile(r'#include\s*[<"](torch/|ATen/|c10/)')


def _nvcc(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    assert NVCC is not None
    return subprocess.run([NVCC, *args], capture_output=True, text=True, timeout=timeout)


def test_the_build_table_names_every_source_and_header() -> None:
    on_disk = {p.relative_to(CSRC).as_posix() for p in CUDA_DIR.iterdir() if p.suffix in (".cu", ".cpp")}
    assert set(cuda_kernels.SOURCES) == on_disk
    headers = {p.relative_to(CSRC).as_posix() for p in CUDA_DIR.iterdir() if p.suffix in (".h", ".cuh")}
    assert set(cuda_kernels.HEADERS) == headers


def test_kernels_are_plain_cuda_and_only_the_binding_sees_torch() -> None:
    """torch's headers make a .cu take minutes under nvcc; only registration.cpp (a host file) includes them."""
    for p in sorted(CUDA_DIR.iterdir()):
        if p.name != "registration.cpp":
            assert not TORCH_INCLUDES.search(p.read_text()), f"{p.name} includes a torch header"


def test_hopper_gets_its_own_target() -> None:
    assert cuda_kernels.arch_flags((9, 0)) == ("-gencode=arch=compute_90a,code=sm_90a",)
    assert cuda_kernels.arch_flags((8, 9)) == ("-gencode=arch=compute_89,code=sm_89",)


@needs_nvcc
def test_every_kernel_compiles_for_sm90a(tmp_path: Path) -> None:
    sources = sorted(CUDA_DIR.glob("*.cu"))

    def compile_one(src: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        return src, _nvcc("-c", *cuda_kernels.CUDA_CFLAGS, *HOPPER, f"-I{CSRC}", f"-I{CUDA_DIR}", "-Xptxas", "-v",
                          str(src), "-o", str(tmp_path / f"{src.stem}.o"))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for src, r in pool.map(compile_one, sources):
            assert r.returncode == 0, f"{src.name} does not compile:\n{r.stderr[-4000:]}"
            # a spill to local memory is a slow path worth knowing of at review, not a failure
            assert (tmp_path / f"{src.stem}.o").stat().st_size > 0


@needs_nvcc
def test_the_binding_compiles_against_torch(tmp_path: Path) -> None:
    """registration.cpp against this torch's headers. A CPU build of torch lacks one generated header
    (c10/cuda/impl/cuda_cmake_macros.h); a stub of it stands in here, the device's torch has the real one."""
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    if not (Path(torch.__file__).parent / "include" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    include = Path(torch.__file__).parent / "include"
    abi = int(torch.compiled_with_cxx11_abi())
    r = _nvcc("-c", "-x", "c++", "-std=c++20", f"-I{tmp_path / 'stub'}", f"-I{include}",
              f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{CSRC}", f"-I{CUDA_DIR}",
              f"-D_GLIBCXX_USE_CXX11_ABI={abi}", str(CUDA_DIR / "registration.cpp"), "-o", str(tmp_path / "reg.o"))
    assert r.returncode == 0, r.stderr[-4000:]


# ---- the number formats, as host code ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quant_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    exe = tmp_path_factory.mktemp("quant") / "quant_host"
    r = _nvcc("-std=c++17", f"-I{CUDA_DIR}", str(Path(__file__).parent / "cuda" / "quant_host.cu"), "-o", str(exe))
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def _run(exe: Path, mode: str, x: torch.Tensor | None = None, block: int = 0) -> torch.Tensor:
    src, dst = exe.parent / "in.bin", exe.parent / "out.bin"
    src.write_bytes(b"" if x is None else x.float().contiguous().numpy().tobytes())
    r = subprocess.run([str(exe), mode, str(block), str(src), str(dst)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return torch.frombuffer(bytearray(dst.read_bytes()), dtype=torch.float32)


def _bits_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit, except that any NaN equals any NaN (payloads differ between torch and the hardware)."""
    want = want.float().flatten()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    g, w = got[~nan].view(torch.int32), want[~nan].view(torch.int32)
    bad = (g != w).nonzero().flatten()
    first = int(bad[0]) if bad.numel() else 0
    assert bad.numel() == 0, f"{bad.numel()} differ, first at {first}: {got[~nan][first]} vs {want[~nan][first]}"


def _awkward(n: int, seed: int) -> torch.Tensor:
    """Random values across many binades, plus values on and next to the rounding points."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-20, 12, (n,), generator=g).float())
    edges = torch.tensor([0.0, -0.0, 448.0, 464.0, 480.0, -500.0, 2.0**-6, 2.0**-9, 2.0**-10, 1.5 * 2.0**-10,
                          3 * 2.0**-10, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 1.0625, 1.1875, float("nan")])
    near = torch.cat([edges, torch.nextafter(edges, torch.full_like(edges, 1e9)),
                      torch.nextafter(edges, torch.full_like(edges, -1e9))])
    return torch.cat([x, near])


def test_decoding_every_byte(quant_host: Path) -> None:
    every = torch.arange(256, dtype=torch.uint8)
    _bits_equal(_run(quant_host, "e4m3"), every.view(torch.float8_e4m3fn).float())
    _bits_equal(_run(quant_host, "ue8m0"), quant.e8m0_to_float(every.view(torch.float8_e8m0fnu)))  # 255: NaN
    _bits_equal(_run(quant_host, "e2m1"), quant.e2m1_decode(torch.arange(16)))


def test_element_roundings(quant_host: Path) -> None:
    x = _awkward(20000, 0)
    _bits_equal(_run(quant_host, "round_e4m3", x), quant.round_e4m3(x))
    _bits_equal(_run(quant_host, "bf16", x), x.to(torch.bfloat16).float())


@pytest.mark.parametrize("block", [32, 64, 128])
def test_block_roundings(quant_host: Path, block: int) -> None:
    g = torch.Generator().manual_seed(block)
    x = torch.randn(64, block, generator=g) * torch.exp2(torch.randint(-30, 10, (64, 1), generator=g).float())
    x[0] = 0.0  # an all-zero block: the floors decide the scale
    x[1, :] = 1e-7
    _bits_equal(_run(quant_host, "fp8_blocks", x, block), quant.fp8_round_blocks(x, block))
    _bits_equal(_run(quant_host, "fp4_blocks", x, block), quant.fp4_round_blocks(x, block))
