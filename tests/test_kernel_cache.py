"""Where the C++ kernels are built: one folder per set of build inputs, and a line on stderr whenever a
build runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from v4cli.runtime import kernel_build, kernels, ops


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("V4_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernel_build.key.cache_clear()
    yield tmp_path / "kernels"
    kernel_build.key.cache_clear()
    ops.reset()


def test_every_build_input_is_in_the_key(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = kernels.build_inputs()
    assert set(inputs) == {"build", "sources", "csrc", "cflags", "cuda_cflags", "torch", "torch_git", "torch_cxx11_abi",
                           "torch_dir", "python", "python_include", "compiler", "env", "machine", "cpu"}
    assert inputs["torch_dir"] == str(Path(__import__("torch").__file__).resolve().parent)
    assert sys.implementation.cache_tag in inputs["python"]
    # another venv: another torch (version or folder), another Python: each its own key
    keys = {kernels.key_of(inputs)}
    others = (("torch", "2.99.0+cpu"), ("torch_dir", "/other/venv/torch"), ("python", "cpython-399"),
              ("torch_cxx11_abi", "False"), ("compiler", "/usr/bin/clang++:1:2"), ("csrc", "/other/clone/csrc"))
    for name, other in others:
        keys.add(kernels.key_of({**inputs, name: other}))
    assert len(keys) == len(others) + 1
    first = kernels.build_dir()
    assert first == fresh_cache / kernels.key_of(inputs)
    # an environment variable that reaches the compiler changes the folder too
    monkeypatch.setenv("CXXFLAGS", "-DV4_TEST=1")
    kernel_build.key.cache_clear()
    assert kernels.build_inputs()["env"] == "CXXFLAGS=-DV4_TEST=1"
    assert kernels.build_dir() != first and kernels.build_dir().parent == first.parent


def test_a_build_says_so_once(fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capfd: pytest.CaptureFixture[str]) -> None:
    # a compiler that does not exist: the build runs (and fails at once), which is said on stderr
    monkeypatch.setenv("V4_KERNELS", "1")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setattr(kernels, "_built", False)  # as in a fresh process (an earlier test may have built here)
    line = kernels.install()
    err = capfd.readouterr().err
    assert line.startswith(kernels.REFERENCE) and "building the C++ kernels (once, about " in err
    assert str(kernels.build_dir()) in err and (kernels.build_dir() / "inputs.json").exists()
    assert "no-such-c++" in (kernels.build_dir() / "inputs.json").read_text()
    line = kernels.install()  # the failure is remembered: no second build, no second message
    assert "an earlier build failed" in line and "building" not in capfd.readouterr().err


@pytest.mark.slow
def test_a_real_build_into_a_fresh_cache_says_so_then_is_reused(tmp_path: Path) -> None:
    code = "from v4cli.runtime import kernels; print(kernels.install())"
    env = {**os.environ, "V4_KERNELS": "1", "V4_KERNEL_CACHE": str(tmp_path / "kernels"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert first.stdout.startswith("C++ CPU kernels"), first.stderr
    assert "building the C++ kernels (once, about " in first.stderr
    assert (tmp_path / "kernels" / "last-build-seconds-v4cli_cpu").exists()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert second.stdout.startswith("C++ CPU kernels") and "building" not in second.stderr
