"""Building a kernel extension once per set of build inputs, and caching it.

One `Build` per backend (kernels.CPU, cuda_kernels.CUDA): its sources, headers and flags. A build lives in a
folder named by the hash of everything it depends on (`inputs`), with `inputs.json` beside it; it announces
itself on stderr; a failure is recorded so that later starts do not compile again; one process builds a folder
at a time, under an OS lock that dies with its holder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch


def source_root() -> Path:
    """The kernel sources: inside the installed package (a wheel carries them, see setup.py), else the
    checkout's csrc/ (an editable install)."""
    packaged = Path(__file__).resolve().parents[1] / "csrc"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "csrc"


CSRC = source_root()
REFERENCE = "PyTorch reference ops"  # how an install names the fallback
# What the compilers see besides the sources and flags: torch's JIT picks the compiler from CXX, and the usual
# flag variables may reach it through the compiler driver.
BUILD_ENV = ("CXX", "CC", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "CUDA_HOME", "NVCC_PREPEND_FLAGS",
             "NVCC_APPEND_FLAGS")


@dataclass(frozen=True)
class Build:
    name: str  # the shared library's name, also the stem of its file
    what: str  # how messages name it ("the C++ kernels")
    sources: tuple[str, ...]  # relative to CSRC
    headers: tuple[str, ...]
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...] = ()
    extra: Callable[[], dict[str, str]] = field(default=dict)  # further inputs (the GPU, nvcc)


def cache_dir() -> Path:
    """Builds live outside V4_HOME so a fresh models folder does not force a rebuild."""
    if os.environ.get("V4_KERNEL_CACHE"):
        return Path(os.environ["V4_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "v4cli-kernels"


def inputs(build: Build) -> dict[str, str]:
    """Everything a build depends on, by name. Two installs on one machine (two virtual environments, two
    checkouts) differ in torch's folder or the sources' (both are in the ninja file: another path means a
    rebuild), often in torch's or Python's version; sharing a folder, each would rebuild over the other's
    build on every run."""
    h = hashlib.sha256()
    for name in build.sources + build.headers:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes())
    return {
        "build": build.name,
        "sources": h.hexdigest(),
        "csrc": str(CSRC),  # the ninja file names the sources by path: another checkout is another build
        "cflags": " ".join(build.cflags),
        "cuda_cflags": " ".join(build.cuda_cflags),
        "torch": torch.__version__,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "torch_cxx11_abi": str(torch.compiled_with_cxx11_abi()),
        "torch_dir": str(Path(torch.__file__).resolve().parent),
        "python": f"{sys.implementation.cache_tag} {sysconfig.get_config_var('EXT_SUFFIX')}",
        "python_include": str(sysconfig.get_paths().get("include", "")),
        "compiler": tool_id(os.environ.get("CXX", "c++")),
        "env": " ".join(f"{k}={os.environ[k]}" for k in BUILD_ENV if k in os.environ),
        "machine": platform.machine(),
        "cpu": cpu_flags(),
        **build.extra(),
    }


def tool_id(program: str) -> str:
    """A program by its resolved path, size and time (an upgrade changes them; no process is started)."""
    found = shutil.which(program)
    if found is None:
        return f"{program} (not found)"
    real = Path(found).resolve()
    st = real.stat()
    return f"{real}:{st.st_size}:{int(st.st_mtime)}"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def key_of(values: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(values):
        h.update(f"{k}={values[k]}\0".encode())
    return h.hexdigest()[:16]


@functools.cache  # read once per process per build: will_build() and load() both ask
def key(build: Build) -> str:
    """The build folder's name: every input of the build; -march=native code must not move to another CPU,
    and one install's build must not be another's."""
    return key_of(inputs(build))


def folder(build: Build) -> Path:
    return cache_dir() / key(build)


def will_build(build: Build) -> bool:
    """True when load() would compile (no cached build, no recorded failure): worth a notice first."""
    try:
        out = folder(build)
        return not (any(out.glob(f"{build.name}*.so")) or (out / "FAILED").exists())
    except OSError:
        return False


def estimate_s(build: Build) -> int:
    """Seconds a build takes here: the last one's, else a guess from the cores (ninja compiles the sources
    in parallel; about two minutes of one core in all)."""
    try:
        return int(float((cache_dir() / f"last-build-seconds-{build.name}").read_text()))
    except (OSError, ValueError):
        return int(round(10 + 150 / min(os.cpu_count() or 1, len(build.sources)), -1))


def announce(message: str) -> None:
    """Straight to stderr, from every command that loads the kernels (ask, chat, serve, a script's Engine)."""
    print(message, file=sys.stderr, flush=True)


def load(build: Build) -> None:
    """Compile (once) and load `build` into this process; raises RuntimeError with one line on failure."""
    import logging

    from torch.utils import cpp_extension

    try:  # the `ninja` wheel (a dependency) may not be on PATH when v4 runs outside an activated venv
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    out = folder(build)
    failed = out / "FAILED"
    if failed.exists():  # do not recompile (tens of seconds) on every start after a failure
        raise RuntimeError(f"an earlier build failed, see {failed}; delete {out} to retry")
    building = will_build(build)
    out.mkdir(parents=True, exist_ok=True)
    if building:
        (out / "inputs.json").write_text(json.dumps(inputs(build), indent=2) + "\n")  # what this folder is for
        announce(f"building {build.what} (once, about {estimate_s(build)} s) in {out} …")
    start = time.monotonic()
    log = logging.getLogger(cpp_extension.__name__)
    level, log.level = log.level, logging.ERROR  # its compiler warnings would land in the user's terminal
    try:
        with _lock(out):
            cpp_extension.load(name=build.name, sources=[str(CSRC / s) for s in build.sources],
                               extra_cflags=list(build.cflags), extra_cuda_cflags=list(build.cuda_cflags),
                               extra_include_paths=[str(CSRC)], build_directory=str(out), is_python_module=False,
                               verbose=False)
        if building:
            (cache_dir() / f"last-build-seconds-{build.name}").write_text(f"{time.monotonic() - start:.0f}\n")
    except Exception as e:
        failed.write_text(f"{type(e).__name__}: {e}\n")
        line = first_line(e)
        raise RuntimeError(f"{line if len(line) <= 100 else 'the build failed'}, see {failed}") from None
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
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


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
