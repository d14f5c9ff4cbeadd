"""The attention kernels' warp-level data flow without a GPU (tests/cuda/attn_host.cu, host code over
csrc/cuda/attention.cuh): one warp of sparse_attention's tensor-core kernel (q.k logits, the masked online softmax,
P as the A operand, P V through ldmatrix.trans) and one of indexer_scores' (keys held as B fragments, the weighted
relu sum over heads and fragment rows), through an emulated ldmatrix and m16n8k16, against float64; and the
split of a row's candidates and the combination of the splits' partials."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from v4cli.runtime import cuda_kernels
from v4cli.runtime.kernel_build import CSRC

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


@pytest.fixture(scope="module")
def attn_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("attn") / "attn_host"
    src = Path(__file__).parent / "cuda" / "attn_host.cu"
    r = subprocess.run([NVCC, "-std=c++17", *cuda_kernels.arch_flags((9, 0)), f"-I{CSRC / 'cuda'}", str(src), "-o",
                        str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


@pytest.mark.parametrize("mode", ["attention", "indexer", "split"])
def test_the_kernels_steps_match_float64(attn_host: Path, mode: str) -> None:
    r = subprocess.run([str(attn_host), mode], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
