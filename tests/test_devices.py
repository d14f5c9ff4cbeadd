"""`--device`: auto picks what torch sees; a device that is not there is refused before anything loads, in the
user's terms; a GPU's memory plan counts the step's workspace and points to the CPU when it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from v4cli import hub
from v4cli.cli import app
from v4cli.runtime import devices, plan
from v4cli.runtime.args import ModelArgs
from v4cli.runtime.devices import DeviceError

runner = CliRunner()
GPU = torch.cuda.is_available()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("V4_DEVICE", raising=False)
    return tmp_path / "home"


def test_auto_is_what_torch_sees() -> None:
    assert devices.resolve("auto").type == ("cuda" if GPU else "cpu")
    assert devices.resolve(None) == devices.resolve("auto")
    assert devices.resolve(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(GPU, reason="a CUDA device is present")
def test_cuda_without_one_says_what_is_missing() -> None:
    with pytest.raises(DeviceError) as e:
        devices.resolve("cuda")
    why = str(e.value)
    assert ("built without CUDA" in why) if torch.version.cuda is None else ("no CUDA device" in why)
    assert "--device cpu" in why


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x", "mps"])
def test_what_is_no_device_is_refused(spec: str) -> None:
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        devices.resolve(spec)


@pytest.mark.skipif(GPU, reason="a CUDA device is present")
@pytest.mark.parametrize("verb", [["ask", "hello", "--max-tokens", "4"], ["show", "tiny"], ["show", "flash"]])
def test_the_cli_refuses_a_missing_gpu_before_loading(home: Path, verb: list[str]) -> None:
    r = runner.invoke(app, [*verb, "--device", "cuda"])
    assert r.exit_code == 1, r.output
    assert "--device cuda" in r.output and "--device cpu" in r.output
    assert "Traceback" not in r.output
    # and V4_DEVICE is the same option
    r = runner.invoke(app, verb, env={"V4_DEVICE": "cuda"})
    assert r.exit_code == 1 and "--device cuda" in r.output


def test_the_cli_runs_on_the_cpu_when_told(home: Path) -> None:
    hub.resolve("tiny")
    r = runner.invoke(app, ["ask", "--no-think", "--device", "cpu", "--max-tokens", "3", "--temperature", "0", "hi"])
    assert r.exit_code == 0, r.output


def _flash() -> ModelArgs:
    return ModelArgs.from_dict(hub.known_config("flash"))


def test_a_gpu_plan_counts_the_workspace_and_points_to_the_cpu() -> None:
    args, gib = _flash(), 1 << 30
    cpu = plan.plan(args, 65536, 1, available=400 * gib)
    gpu = plan.plan(args, 65536, 1, available=400 * gib, device="cuda:0", chunk=2048)
    assert cpu.workspace == 0 and gpu.workspace > 256 << 20
    assert gpu.total == cpu.total + gpu.workspace and gpu.weights == cpu.weights
    # a longer prefill chunk needs more: the indexer's scores of a chunk grow with the context
    assert plan.plan(args, 1 << 20, 1, available=400 * gib, device="cuda:0", chunk=2048).workspace > gpu.workspace
    assert "on cuda:0" in gpu.describe() and "workspace" in gpu.describe()
    # one H200: Flash's 149 GiB of weights do not fit its 141 GiB; the message names the device and the way out
    h200 = plan.plan(args, 65536, 1, available=141 * gib, device="cuda:0")
    with pytest.raises(plan.MemoryPlanError) as e:
        h200.check()
    assert "on cuda:0" in str(e.value) and "--device cpu" in str(e.value)
    # what fits is computed with the workspace set aside
    roomy = plan.plan(args, 1 << 20, 4, available=h200.weights + 20 * gib, device="cuda:0")
    with pytest.raises(plan.MemoryPlanError, match="What would fit"):
        roomy.check()
    fit = roomy.max_context()
    assert 0 < fit < 1 << 20
    assert plan.plan(args, fit, 4, available=roomy.available, device="cuda:0").state + roomy.workspace \
        <= roomy.available - roomy.weights
