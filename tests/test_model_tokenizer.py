"""A model folder without tokenizer.json: the engine detokenizes with the tokenizer the CLI encodes with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from v4cli.cli import app

runner = CliRunner()


def without_tokenizer(src: Path, dst: Path) -> Path:
    """`src` as another folder (links to its files) minus tokenizer.json."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.json":
            (dst / f.name).symlink_to(f)
    return dst


@pytest.fixture
def env(serve_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("V4_MODEL", raising=False)
    return serve_home


def test_a_folder_without_tokenizer_json_answers_in_text(env: Path, tmp_path: Path) -> None:
    folder = without_tokenizer(env / "models" / "tiny", tmp_path / "tiny-copy")
    r = runner.invoke(app, ["ask", "-m", str(folder), "--no-think", "--max-tokens", "12", "-t", "0", "--context",
                            "1024", "--json", "hi"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["usage"]["completion_tokens"] == 12 and out["answer"].strip()  # was "" with 12 tokens
    with_tok = runner.invoke(app, ["ask", "-m", str(env / "models" / "tiny"), "--no-think", "--max-tokens", "12",
                                   "-t", "0", "--context", "1024", "--json", "hi"])
    assert json.loads(with_tok.stdout)["answer"] == out["answer"]  # the same tokenizer either way


def test_a_folder_whose_vocabulary_the_tokenizer_does_not_fit_is_refused(ckpt_dir, env: Path, tmp_path: Path) -> None:
    folder = without_tokenizer(ckpt_dir("flash"), tmp_path / "small-vocab")  # a vocabulary of 1,024
    r = runner.invoke(app, ["ask", "-m", str(folder), "--no-think", "--max-tokens", "2", "--context", "1024", "hi"],
                      env={**os.environ})
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{folder.resolve()} has no tokenizer.json" in r.stderr and "vocabulary of 1,024" in r.stderr


def test_a_damaged_tokenizer_json_is_named_not_a_traceback(env: Path, tmp_path: Path) -> None:
    folder = without_tokenizer(env / "models" / "tiny", tmp_path / "tiny-damaged")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "truncation": nu')  # cut off mid-write
    r = runner.invoke(app, ["ask", "-m", str(folder), "--no-think", "--max-tokens", "2", "--context", "1024", "hi"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "tokenizer.json cannot be read as a tokenizer" in r.stderr and "v4 pull" in r.stderr
