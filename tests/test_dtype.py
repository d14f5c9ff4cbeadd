"""`--dtype`: bfloat16 by default (the reference's), float32 when told, on every command that runs the model;
anything else is a usage error that names the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from v4cli import hub
from v4cli.backend import LocalBackend
from v4cli.cli import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("V4_DTYPE", raising=False)
    hub.resolve("tiny")
    return tmp_path / "home"


@pytest.mark.parametrize("verb", [["ask", "hi"], ["chat"], ["serve"]])
def test_an_unknown_dtype_is_a_usage_error(home: Path, verb: list[str]) -> None:
    r = runner.invoke(app, [*verb, "--dtype", "float16"])
    assert r.exit_code == 2
    assert "float16" in r.output and "bfloat16" in r.output and "float32" in r.output


@pytest.mark.parametrize("dtype, want", [(None, torch.bfloat16), ("float32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_engine_runs_in_the_dtype_it_is_told(home: Path, dtype: str | None, want: torch.dtype) -> None:
    backend = LocalBackend("tiny", context=4096) if dtype is None else LocalBackend("tiny", context=4096,
                                                                                     dtype=_cli_name(dtype))
    backend.load()
    try:
        assert backend.engine.model.dtype == want
        assert backend.engine.model.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn  # weights as stored
    finally:
        backend.close()


def _cli_name(value: str) -> str:
    from v4cli.cli.app import _dtype

    return _dtype(value)


def test_ask_answers_in_float32_from_the_flag_and_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["ask", "--no-think", "--device", "cpu", "--max-tokens", "3", "--temperature", "0", "hi"]
    r = runner.invoke(app, [*args, "--dtype", "fp32"])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("V4_DTYPE", "float32")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
