"""Which device a model runs on: `--device auto|cpu|cuda[:N]`, checked before anything is loaded."""

from __future__ import annotations

import torch

from ..errors import UserError

CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(UserError, ValueError):
    pass


def resolve(spec: str | torch.device | None) -> torch.device:
    """`auto` (or None): the first CUDA device when torch sees one, else the CPU. `cuda` without one is refused
    with what is missing (a CPU-only torch, no driver or GPU, an index past the count)."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {spec!r} is not a device: use {CHOICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"--device {spec!r}: v4 runs on {CHOICES}")
    if torch.version.cuda is None:
        raise DeviceError(f"--device {spec}: this torch ({torch.__version__}) is built without CUDA; install a CUDA "
                          "build of torch (https://pytorch.org/get-started/locally/) or use --device cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"--device {spec}: torch sees no CUDA device (no GPU, or its driver is not loaded); "
                          "nvidia-smi should list one. Or use --device cpu")
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"--device {spec}: there {'is' if count == 1 else 'are'} {count} CUDA "
                          f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())


def describe(dev: torch.device) -> str:
    """For the memory plan and notices: 'cpu' or 'cuda:0 (NVIDIA H200)'."""
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)
