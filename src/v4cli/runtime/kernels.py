"""The compiled kernels behind `ops`: C++ for the CPU (csrc/), built on first use and cached.

`install()` builds (once per set of build inputs: sources, flags, compiler, torch and Python as installed, the
CPU; see `build_inputs`), saying so on stderr, and registers them; without a compiler, the
sources or a working build, the PyTorch twins keep running and `install()` says why in one line.
`V4_KERNELS=0` keeps the twins. `make setup` builds them ahead of time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import ops, ops_ref, quant

CSRC = Path(__file__).resolve().parents[3] / "csrc"
SOURCES = ("registration.cpp", "cpu/linear.cpp", "cpu/dense.cpp", "cpu/hc.cpp", "cpu/moe.cpp", "cpu/attention.cpp",
           "cpu/rotate.cpp", "cpu/rounding.cpp")
HEADERS = ("ops.h", "cpu/simd.h", "cpu/parallel.h")
# Tuned for the CPU that builds it (the cache key includes its features). Clang on arm64 wants -mcpu.
CFLAGS = ("-O3", "-mcpu=native" if platform.machine().lower() in ("arm64", "aarch64") else "-march=native")

REFERENCE = "PyTorch reference ops"  # how install() names the fallback
# Up to this many input rows the FP8/FP4 linear runs its row kernel (csrc/cpu/linear.cpp, kRowKernelMax), whose
# result for a row does not depend on the other rows; past it, one GEMM over all rows (faster, not row-invariant).
ROW_KERNEL_MAX = 32
_built = False


def enabled() -> bool:
    return os.environ.get("V4_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    """Builds live outside V4_HOME so a fresh models folder does not force a rebuild."""
    if os.environ.get("V4_KERNEL_CACHE"):
        return Path(os.environ["V4_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "v4cli-kernels"


# What the compiler sees besides the sources and flags: torch's JIT picks the compiler from CXX, and
# the usual flag variables may reach it through the compiler driver.
BUILD_ENV = ("CXX", "CC", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS")


def build_inputs() -> dict[str, str]:
    """Everything a build depends on, by name. Two installs on one machine (two virtual environments, two
    checkouts) differ in torch's folder or the sources' (both are in the ninja file: another path means a
    rebuild), often in torch's or Python's version; sharing a folder, each would rebuild over the other's
    build on every run."""
    import sys
    import sysconfig

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    cxx = os.environ.get("CXX", "c++")
    return {
        "sources": h.hexdigest(),
        "csrc": str(CSRC),  # the ninja file names the sources by path: another checkout is another build
        "cflags": " ".join(CFLAGS),
        "torch": torch.__version__,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "torch_cxx11_abi": str(torch.compiled_with_cxx11_abi()),
        "torch_dir": str(Path(torch.__file__).resolve().parent),
        "python": f"{sys.implementation.cache_tag} {sysconfig.get_config_var('EXT_SUFFIX')}",
        "python_include": str(sysconfig.get_paths().get("include", "")),
        "compiler": _compiler(cxx),
        "env": " ".join(f"{k}={os.environ[k]}" for k in BUILD_ENV if k in os.environ),
        "machine": platform.machine(),
        "cpu": _cpu_flags(),
    }


def _compiler(cxx: str) -> str:
    """The compiler by its resolved path, size and time (an upgrade changes them; no process is started)."""
    import shutil

    found = shutil.which(cxx)
    if found is None:
        return f"{cxx} (not found)"
    real = Path(found).resolve()
    st = real.stat()
    return f"{real}:{st.st_size}:{int(st.st_mtime)}"


def key_of(inputs: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(inputs):
        h.update(f"{k}={inputs[k]}\0".encode())
    return h.hexdigest()[:16]


@functools.cache  # read once per process: will_build() and install() both ask
def build_key() -> str:
    """The build folder's name: every input of the build (`build_inputs`); -march=native code must not move to
    another CPU, and one install's build must not be another's."""
    return key_of(build_inputs())


def build_dir() -> Path:
    return cache_dir() / build_key()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def will_build() -> bool:
    """True when install() would compile (no cached build, no recorded failure): worth a notice first."""
    if not enabled():
        return False
    try:
        out = build_dir()
        return not (any(out.glob("v4cli_cpu*.so")) or (out / "FAILED").exists())
    except OSError:
        return False


def _estimate_s() -> int:
    """Seconds a build takes here: the last one's, else a guess from the cores (ninja compiles the sources
    in parallel; about two minutes of one core in all)."""
    try:
        return int(float((cache_dir() / "last-build-seconds").read_text()))
    except (OSError, ValueError):
        return int(round(10 + 150 / min(os.cpu_count() or 1, len(SOURCES)), -1))


def _announce(message: str) -> None:
    """Straight to stderr, from every command that loads the kernels (ask, chat, serve, a script's Engine)."""
    import sys

    print(message, file=sys.stderr, flush=True)


def _build() -> None:
    import logging

    from torch.utils import cpp_extension

    try:  # the `ninja` wheel (a dependency) may not be on PATH when v4 runs outside an activated venv
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    out = build_dir()
    failed = out / "FAILED"
    if failed.exists():  # do not recompile (tens of seconds) on every start after a failure
        raise RuntimeError(f"an earlier build failed, see {failed}; delete {out} to retry")
    building = will_build()
    out.mkdir(parents=True, exist_ok=True)
    if building:
        (out / "inputs.json").write_text(json.dumps(build_inputs(), indent=2) + "\n")  # what this folder is for
        _announce(f"building the C++ kernels (once, about {_estimate_s()} s) in {out} …")
    start = time.monotonic()
    log = logging.getLogger(cpp_extension.__name__)
    level, log.level = log.level, logging.ERROR  # its compiler warnings would land in the user's terminal
    try:
        with _build_lock(out):
            cpp_extension.load(name="v4cli_cpu", sources=[str(CSRC / s) for s in SOURCES],
                               extra_cflags=list(CFLAGS), build_directory=str(out), is_python_module=False,
                               verbose=False)
        if building:
            (cache_dir() / "last-build-seconds").write_text(f"{time.monotonic() - start:.0f}\n")
    except Exception as e:
        failed.write_text(f"{type(e).__name__}: {e}\n")
        line = _first_line(e)
        raise RuntimeError(f"{line if len(line) <= 100 else 'the build failed'}, see {failed}") from None
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One build of a folder at a time, by an OS lock that dies with its holder.

    torch's own lock is a plain file: a build killed midway (Ctrl-C twice, the OOM killer) leaves it behind
    and every later start waits on it forever. Holding this lock, any such file is stale (every live builder
    holds this one first), so it is removed.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(out / "build.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (out / "lock").unlink(missing_ok=True)
        yield


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def install() -> str:
    """Build or load the CPU kernels and route `ops` to them; returns a line saying what runs."""
    global _built
    why = None
    if not enabled():
        why = "V4_KERNELS=0"
    elif not all((CSRC / s).exists() for s in SOURCES):
        why = f"kernel sources not found at {CSRC}"
    elif not _built:
        try:
            _build()
            _built = True
        except Exception as e:  # no compiler, no ninja, a failed build: the twins compute the same ops
            why = f"C++ kernels unavailable: {_first_line(e)}"
    if why is not None:
        ops.reset()  # what the line says is what runs, even after an earlier install in this process
        return f"{REFERENCE} ({why})"
    for name in ops.OP_NAMES:  # every op has its wrapper below, under the op's own name
        ops.register(name, globals()[name])
    return f"C++ CPU kernels: {', '.join(ops.OP_NAMES)}"


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    k = weight.shape[1]
    if x.device.type != "cpu":
        return ops_ref.fp8_linear(x, weight, scale, act_quant)
    xin = x.reshape(-1, k)  # float32 and bfloat16 go in as they are (the kernel widens exactly, returns that dtype)
    xin = xin if xin.dtype in (torch.float32, torch.bfloat16) else xin.float()
    y = torch.ops.v4cli.fp8_linear(xin.contiguous(), weight, scale.view(torch.uint8), act_quant)
    return y.view(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def fp4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, act_quant: bool) -> torch.Tensor:
    k = packed.shape[1] * 2
    if x.device.type != "cpu":
        return ops_ref.fp4_linear(x, packed, scale, act_quant)
    xin = x.reshape(-1, k)
    xin = xin if xin.dtype in (torch.float32, torch.bfloat16) else xin.float()
    y = torch.ops.v4cli.fp4_linear(xin.contiguous(), packed, scale.view(torch.uint8), act_quant)
    return y.view(*x.shape[:-1], packed.shape[0]).to(x.dtype)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return ops_ref.dense_linear(x, weight)
    k = weight.shape[1]
    dtype = torch.promote_types(x.dtype, weight.dtype)  # float32 x with a bfloat16 weight: read as it is
    y = torch.ops.v4cli.dense_linear(x.reshape(-1, k).to(dtype).contiguous(), weight.contiguous())
    return y.view(*x.shape[:-1], weight.shape[0])


def moe_experts(x: torch.Tensor, weights: torch.Tensor, picks: torch.Tensor, w1: list[torch.Tensor],
                s1: list[torch.Tensor], w3: list[torch.Tensor], s3: list[torch.Tensor], w2: list[torch.Tensor],
                s2: list[torch.Tensor], limit: float, act_quant: bool) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return ops_ref.moe_experts(x, weights, picks, w1, s1, w3, s3, w2, s2, limit, act_quant)
    return torch.ops.v4cli.moe_experts(x.float().contiguous(), weights.float(), picks.long(), w1, s1, w3, s3, w2, s2,
                                       limit, act_quant, x.dtype == torch.bfloat16)


_ATTN_DTYPES = (torch.float32, torch.bfloat16)


def sparse_attention(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, idx: torch.Tensor, softmax_scale: float,
                     dense: torch.Tensor | None = None, limit: torch.Tensor | None = None) -> torch.Tensor:
    if (q.device.type != "cpu" or kv.device.type != "cpu" or q.dtype not in _ATTN_DTYPES
            or kv.dtype not in _ATTN_DTYPES or (dense is not None and dense.dtype not in _ATTN_DTYPES)):
        return ops_ref.sparse_attention(q, kv, sink, idx, softmax_scale, dense, limit)
    return torch.ops.v4cli.sparse_attention(q.contiguous(), kv.contiguous(), sink.float().contiguous(),
                                            idx.long().contiguous(), float(softmax_scale),
                                            None if dense is None else dense.contiguous(),
                                            None if limit is None else limit.long().contiguous())


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    if q.device.type != "cpu" or keys.device.type != "cpu" or q.dtype not in _ATTN_DTYPES:
        return ops_ref.indexer_scores(q, weights, keys)
    if keys.dtype not in _ATTN_DTYPES:
        keys = keys.to(q.dtype)
    # The twin multiplies by the weights in q's dtype: bfloat16 values, exact in float32.
    return torch.ops.v4cli.indexer_scores(q.contiguous(), weights.to(q.dtype).float().contiguous(), keys.contiguous())


def hc_sinkhorn(mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int, iters: int,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if mixes.device.type != "cpu":
        return ops_ref.hc_sinkhorn(mixes, scale, base, n, iters, eps)
    return torch.ops.v4cli.hc_sinkhorn(mixes, scale, base, n, iters, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES or cos.dtype != torch.float32:
        return ops_ref.rope(x, cos, sin, inverse)
    return torch.ops.v4cli.rope(x.contiguous(), cos.contiguous(), sin.contiguous(), inverse)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.hadamard(x)
    return torch.ops.v4cli.hadamard(x.contiguous())


def fp8_round(x: torch.Tensor, block: int, width: int | None = None) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.fp8_round(x, block, width)
    return torch.ops.v4cli.fp8_round(x.contiguous(), block, x.shape[-1] if width is None else width)


def fp4_round(x: torch.Tensor, block: int = quant.FP4_BLOCK) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ATTN_DTYPES:
        return ops_ref.fp4_round(x, block)
    return torch.ops.v4cli.fp4_round(x.contiguous(), block)
