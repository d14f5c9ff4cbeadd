"""Shared fixtures: tiny checkpoints written once per session in the real on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite runs on the PyTorch twins, so bit-for-bit tests do not depend on which kernels a machine
# builds; tests/test_kernels.py turns the C++ kernels on and checks them against the twins.
os.environ["V4_KERNELS"] = "0"

from v4cli.runtime.tiny import tiny_args, write_checkpoint


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory):
    """Return a factory: (pattern, layout, **overrides) -> checkpoint folder (cached per session)."""
    made: dict[tuple, Path] = {}

    def make(pattern: str = "flash", layout: str = "official", seed: int = 0, **overrides) -> Path:
        key = (pattern, layout, seed, repr(sorted(overrides.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"{pattern}-{layout}")
            made[key] = write_checkpoint(root, tiny_args(pattern, **overrides), seed=seed, layout=layout)
        return made[key]

    return make


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A V4_HOME with the built-in tiny model written once, for the tests that start `v4 serve`."""
    from v4cli import hub

    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("V4_HOME", str(home))
        hub.resolve("tiny")
    return home


@pytest.fixture(scope="session")
def v4_server(serve_home: Path):
    """One `v4 serve --model tiny` with its default settings, on a loopback port, for the session."""
    from v4server import V4Server

    with V4Server(serve_home, "--keepalive", "0.5") as srv:
        yield srv


@pytest.fixture(scope="module")
def built():
    """The C++ kernels built (or loaded from the cache) and installed for one module; the twins again
    afterwards (the rest of the suite runs on them)."""
    from v4cli.runtime import kernels, ops

    mp = pytest.MonkeyPatch()
    mp.setenv("V4_KERNELS", "1")
    line = kernels.install()
    assert line.startswith("C++ CPU kernels"), line  # this machine has a compiler: the build must work
    yield line
    ops.reset()
    mp.undo()
