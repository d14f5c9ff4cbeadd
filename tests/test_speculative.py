"""MTP speculative decoding: the same greedy output as plain decoding, whatever the drafts are."""

import pytest
import torch

from v4cli.runtime import Engine, SamplingParams, load_model
from v4cli.runtime.speculative import MtpDrafter, verify


def _prompt(n, seed):
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def model(ckpt_dir):
    return load_model(ckpt_dir("flash"), simulate_quant=False)


class SteeredDrafter(MtpDrafter):
    """The real MTP block runs (its state stays in step), but the proposals are replaced by the
    true greedy token (`right`) or a wrong one, so every accept and reject path is exercised."""

    def __init__(self, model, full, pattern):
        super().__init__(model)
        self.full, self.pattern, self.calls = full, pattern, 0

    def catch_up(self, items):
        real = super().catch_up(items)
        out = []
        for (_, start, _, seq), d in zip(items, real, strict=True):
            pos = start + len(seq)
            if d is None or pos >= len(self.full):
                out.append(d)
                continue
            right = self.full[pos]
            good = self.pattern[self.calls % len(self.pattern)]
            self.calls += 1
            out.append(right if good else (right + 1) % 1024)
        return out


def _plain(model, prompt, n):
    return Engine(model).generate(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)).token_ids


@pytest.mark.parametrize("pattern", [[True], [False], [True, False, True, True, False]])
def test_speculative_greedy_equals_plain_greedy(model, pattern):
    prompt = _prompt(45, seed=len(pattern))
    plain = _plain(model, prompt, 12)
    engine = Engine(model, chunk_size=16, speculative=True)
    engine.drafter = SteeredDrafter(model, prompt + plain, pattern)
    r = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert r.token_ids == plain
    stats = engine.drafter.stats
    assert stats.drafted > 0
    want = 1.0 if pattern == [True] else 0.0 if pattern == [False] else None
    if want is not None:
        assert stats.acceptance_rate == want


def test_real_mtp_drafts_keep_greedy_output(model):
    engine = Engine(model, chunk_size=32, speculative=True)
    for seed in (1, 2):
        prompt = _prompt(30 + seed, seed=seed)
        got = engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)).token_ids
        assert got == _plain(model, prompt, 8)
    assert engine.drafter.stats.drafted >= 14  # one draft per decode step, reported as a rate
    assert 0.0 <= engine.drafter.stats.acceptance_rate <= 1.0


def test_batched_speculative_requests(model):
    prompts = [_prompt(n, seed=n) for n in (9, 27)]
    plains = [_plain(model, p, 6) for p in prompts]
    engine = Engine(model, chunk_size=16, speculative=True)
    engine.drafter = SteeredDrafter(model, [], [True])  # no oracle: real MTP drafts
    ids = [engine.add_request(p, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)) for p in prompts]
    got = {i: [] for i in ids}
    while engine.has_work():
        for ev in engine.step():
            got[ev.request_id].append(ev.token_id)
    assert [got[i] for i in ids] == plains


def test_verify_sampling_keeps_the_target_distribution():
    # A deterministic draft accepted with probability p(d) and otherwise resampled from p without d
    # reproduces p exactly: check the empirical frequencies over many seeds.
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    p = SamplingParams(temperature=1.0)
    counts = torch.zeros(4)
    g = torch.Generator().manual_seed(0)
    for _ in range(4000):
        new, _, _ = verify(logits, [1], p, [], g)
        counts[new[0]] += 1
    assert torch.allclose(counts / counts.sum(), logits[0].softmax(-1), atol=0.03)


def test_speculative_needs_an_mtp_block(ckpt_dir):
    bare = load_model(ckpt_dir("flash", num_nextn_predict_layers=0, compress_ratios=[0, 0, 4, 128, 4]))
    assert len(bare.mtp) == 0
    with pytest.raises(ValueError, match="MTP"):
        Engine(bare, speculative=True)
