"""The tiny model end to end: greedy decoding on the device (its kernels) against the CPU (the PyTorch twins),
float32 without the quantisation-aware rounding, so that both compute the same function to float32 rounding."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from v4cli.runtime import kernels, ops
from v4cli.runtime.cache import SeqState
from v4cli.runtime.model import Transformer
from v4cli.runtime.tiny import tiny_args, write_checkpoint
from v4cli.runtime.weights import load_model

PROMPT = 150  # past the HCA ratio (128): both compressors close entries; a prefill of more than 32 rows
NEW = 32


@torch.inference_mode()
def greedy(model: Transformer, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor, float]:
    """n greedy tokens after `prompt`: the tokens, the logits [n, vocab] that chose them (on the CPU), seconds."""
    dev = model.embed.weight.device
    state = SeqState.new(model.args, model.dtype, dev)
    start = time.perf_counter()
    h = model(torch.tensor(prompt, device=dev), [state], [len(prompt)])
    tokens, logits = [], []
    for _ in range(n):
        step = model.head_logits(h[-1:])[0]
        logits.append(step.float().cpu())
        tokens.append(int(step.argmax()))
        h = model(torch.tensor(tokens[-1:], device=dev), [state], [1])
    return tokens, torch.stack(logits), time.perf_counter() - start


def run(device: torch.device, work: Path, seed: int) -> dict[str, Any]:
    path = write_checkpoint(work / "tiny", tiny_args("flash"), seed=seed, tokenizer=False)
    prompt = torch.randint(0, tiny_args().vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(seed)).tolist()
    ops.reset("cpu")  # the reference: the PyTorch twins on the CPU
    try:
        cpu_model = load_model(path, "cpu", torch.float32, simulate_quant=False)
        ref_tokens, ref_logits, ref_s = greedy(cpu_model, prompt, NEW)
    finally:
        kernels.install(device)  # the kernels again (the build is loaded: registration only)
    tokens, logits, dev_s = greedy(load_model(path, device, torch.float32, simulate_quant=False), prompt, NEW)
    same = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=True)) if a != b), NEW)
    # logits[i] follow the same tokens on both sides up to the first difference (and there)
    diff = (logits[: same + 1] - ref_logits[: same + 1]).abs().max().item()
    finite = bool(torch.isfinite(logits).all())
    return {"tokens": tokens, "ref_tokens": ref_tokens, "equal": tokens == ref_tokens, "same_prefix": same,
            "max_logit_diff": diff, "max_logit": ref_logits.abs().max().item(), "finite": finite,
            "prompt_tokens": PROMPT, "new_tokens": NEW, "device_s": dev_s, "ref_s": ref_s,
            "ok": tokens == ref_tokens and finite}
