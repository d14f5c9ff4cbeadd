"""`describe` and `v4 show PATH`: layout, storage per tensor family and problems, from the headers alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from v4cli.cli import app
from v4cli.runtime.description import describe

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("V4_DEBUG", raising=False)
    return tmp_path


def test_official_checkpoint(ckpt_dir):
    d = describe(ckpt_dir("flash"), context=4096)
    assert d["layout"] == "official" and d["problems"] == [] and "remedy" not in d
    assert d["storage"] == {"embedding/head": "BF16", "routed experts": "FP4", "shared expert": "FP8",
                            "router": "BF16", "norms": "BF16", "indexer": "FP8 + BF16", "compressor": "BF16",
                            "attention": "FP8", "MTP projections": "FP8", "mHC": "FP32"}
    assert d["tensors"] == d["tensors_recognised"] == 504 and d["mtp_on_disk"]
    plan = d["memory_plan"]
    assert plan["context"] == 4096 and plan["weights_bytes"] > 0 and "memory plan: 1 x 4,096 tokens" in plan["text"]


def test_transformers_checkpoint(ckpt_dir):
    d = describe(ckpt_dir("pro", "hf"))
    assert d["layout"] == "transformers" and d["problems"] == []
    assert d["storage"]["routed experts"] == "BF16" and d["storage"]["attention"] == "BF16"
    assert d["memory_plan"]["context"] == 1048576  # the model's longest when no context is asked for


def test_show_of_a_good_folder(home, ckpt_dir):
    r = runner.invoke(app, ["show", str(ckpt_dir("flash")), "--context", "2048"])
    assert r.exit_code == 0, r.output
    assert "official (deepseek-ai release)" in r.stdout and "routed experts FP4" in r.stdout
    assert "memory plan: 1 x 2,048 tokens" in r.stdout


def test_show_of_a_truncated_folder_lists_the_problems_and_fails(home, ckpt_dir):
    folder = home / "ckpt"
    shutil.copytree(ckpt_dir("flash"), folder)
    shards = sorted(folder.glob("*.safetensors"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[:1000])
    shards[2].unlink()
    r = runner.invoke(app, ["show", str(folder)])
    assert r.exit_code == 1
    assert "official (deepseek-ai release)" in r.stdout  # what can be shown still is
    err = r.stderr.splitlines()
    assert err[0] == f"error: {folder} cannot be loaded: 2 problems:"
    assert err[1].startswith(f"  - {shards[1].name}: ")
    assert err[2] == f"  - {shards[2].name}: missing (the index lists it)"
    assert err[3].startswith("The folder is incomplete or damaged") and len(err) == 4
    info = json.loads(runner.invoke(app, ["show", str(folder), "--json"]).stdout)
    assert len(info["problems"]) == 2 and info["remedy"].startswith("The folder is incomplete")


def test_show_of_a_folder_without_weights(home, ckpt_dir):
    folder = home / "empty"
    folder.mkdir()
    shutil.copyfile(ckpt_dir("flash") / "config.json", folder / "config.json")
    r = runner.invoke(app, ["show", str(folder)])
    assert r.exit_code == 1 and "no *.safetensors files" in r.stderr and "Traceback" not in r.output
