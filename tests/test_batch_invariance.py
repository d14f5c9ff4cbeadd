"""Batch invariance with the default settings (C++ kernels, FP8 rounding on, float32): a request generates the
same tokens, with the same logprobs to the bit, whether it runs alone or among others added at other steps.

With the rounding on, a random-weight model is chaotic: an ulp of difference anywhere (a GEMM blocked
differently over the step's rows, a prompt chunked differently, an exp taken by another code path) flips
some roundings and changes the tokens. So this is checked bit for bit, never to a tolerance.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from v4cli.runtime import Engine, SamplingParams, SeqState, kernels, load_model, pointwise

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler on PATH")


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# Prompt lengths around and past chunk_size (32): one chunk, a chunk and a tail, several chunks.
LENGTHS = (5, 90, 33, 17, 64, 120, 40, 3, 71, 28, 100, 50)


def _tokens(events) -> tuple[list[int], list[float]]:
    return [e.token_id for e in events if e.token_id >= 0], [e.logprob.logprob for e in events if e.logprob]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_requests_in_company_generate_what_they_generate_alone(built, ckpt_dir, dtype):
    engine = Engine.from_pretrained(ckpt_dir("flash"), dtype=dtype, max_context=256, max_batch=16, chunk_size=32)
    assert engine.kernels.startswith("C++ CPU kernels") and engine.model.simulate_quant
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, logprobs=0)
    prompts = [_prompt(n, seed=i) for i, n in enumerate(LENGTHS)]
    alone = [_tokens(list(engine.stream(p, params))) for p in prompts]

    # Requests join every other step, so each shares steps with others' prompt chunks and decodes.
    events: dict[int, list] = {}
    waiting, ids, step = list(prompts), [], 0
    while waiting or engine.has_work():
        if waiting and step % 2 == 0:
            ids.append(engine.add_request(waiting.pop(0), params))
            events[ids[-1]] = []
        for ev in engine.step():
            events[ev.request_id].append(ev)
        step += 1
    together = [_tokens(events[i]) for i in ids]
    wrong = [f"prompt of {n} tokens: tokens differ from position {_first_diff(a[0], t[0])} of {len(a[0])}"
             for n, a, t in zip(LENGTHS, alone, together, strict=True) if t[0] != a[0]]
    assert not wrong, "\n".join(wrong)
    wrong = [f"prompt of {n} tokens: logprobs differ from position {_first_diff(a[1], t[1])}"
             for n, a, t in zip(LENGTHS, alone, together, strict=True) if t[1] != a[1]]
    assert not wrong, "\n".join(wrong)


def _first_diff(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_a_prompts_chunks_do_not_depend_on_the_other_prompts(built, ckpt_dir):
    """Each chunk is chunk_size tokens from where the last one ended (cut at cache points and the end);
    a chunk that does not fit in what is left of the step's tokens waits instead of being cut."""
    engine = Engine.from_pretrained(ckpt_dir("flash"), max_context=256, max_batch=4, chunk_size=32)
    params = SamplingParams(max_tokens=1)
    seen: dict[int, list[int]] = {70: [], 50: [], 20: []}
    for n in seen:
        engine.add_request(_prompt(n, seed=n), params, progress=lambda d, t, n=n: seen[n].append(d))
    while engine.has_work():
        engine.step()
    assert seen == {70: [32, 64, 70], 50: [32, 50], 20: [20]}


def test_one_pass_over_many_decode_rows_equals_each_row_alone(built, ckpt_dir):
    """Every op the rows of a decode pass share (mHC, norms, the FP8/FP4 row kernel, the router, the
    experts that see a varying number of tokens, the head) computes each row as if it were alone."""
    model = load_model(ckpt_dir("flash"), simulate_quant=True)
    n_seq = kernels.ROW_KERNEL_MAX
    states = []
    with torch.inference_mode():
        for i in range(n_seq):
            st = SeqState.new(model.args)
            model(torch.tensor(_prompt(3 + i, seed=100 + i)), [st], [3 + i])
            states.append(st)
        tokens = torch.tensor([t[0] for t in (_prompt(1, seed=200 + i) for i in range(n_seq))])
        alone = []
        for i in range(n_seq):
            st = states[i].snapshot()
            h = model(tokens[i : i + 1], [st], [1])
            alone.append((h, model.head_logits(h), st.tensors()))
        for rows in (n_seq, 3, 16):
            batch = [st.snapshot() for st in states[:rows]]
            h = model(tokens[:rows], batch, [1] * rows)
            logits = model.head_logits(h)
            for i, (hi, li, sti) in enumerate(alone[:rows]):
                assert torch.equal(h[i : i + 1], hi), f"{rows} rows: streams of row {i} differ"
                assert torch.equal(logits[i : i + 1], li), f"{rows} rows: logits of row {i} differ"
                for name, t in batch[i].tensors().items():  # the decode states advanced the same way
                    assert torch.equal(t, sti[name]), f"{rows} rows: state {name} of row {i} differs"


@pytest.mark.parametrize("fn", [pointwise.sigmoid, pointwise.silu, pointwise.softplus], ids=lambda f: f.__name__)
@pytest.mark.parametrize("width", [4, 8, 24, 128])
def test_pointwise_functions_do_not_depend_on_the_other_rows(fn, width):
    """torch.sigmoid, F.silu and F.softplus fail this on narrow rows (the router's 8 scores, mHC's 4 gates):
    their vectorised loop and their scalar tail disagree by an ulp. The rewrites agree with them closely."""
    x = torch.randn(80, width, generator=torch.Generator().manual_seed(width)) * 4
    x[0, :3] = torch.tensor([30.0, -30.0, 0.0])
    alone = torch.cat([fn(x[i : i + 1]) for i in range(len(x))])
    for rows in range(1, len(x) + 1):
        assert torch.equal(fn(x[:rows]), alone[:rows]), rows
    torch_fn = {"sigmoid": torch.sigmoid, "silu": torch.nn.functional.silu, "softplus": torch.nn.functional.softplus}
    assert torch.allclose(alone, torch_fn[fn.__name__](x), rtol=1e-6, atol=1e-7)
