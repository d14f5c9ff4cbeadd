"""The Engine: greedy = argmax chain, batching, sampling controls, stops, abort, context limit."""

import pytest
import torch

from v4cli.runtime import ContextLimitError, Engine, SamplingParams
from v4cli.runtime.detokenizer import StopMatcher
from v4cli.runtime.scheduler import Request, Scheduler


@pytest.fixture(scope="module")
def engine(ckpt_dir):
    return Engine.from_pretrained(ckpt_dir("flash"), simulate_quant=False, chunk_size=16, max_context=400)


def _prompt(n, seed=0):
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _argmax_chain(model, prompt, k):
    seq, out = list(prompt), []
    for _ in range(k):
        out.append(int(model.logits(seq)[-1].argmax()))
        seq.append(out[-1])
    return out


def test_greedy_equals_argmax_chain_of_logits(engine):
    prompt = _prompt(37)
    r = engine.generate(prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    assert r.token_ids == _argmax_chain(engine.model, prompt, 6)
    assert r.finish_reason == "length" and r.usage.prompt_tokens == 37 and r.usage.completion_tokens == 6


def test_batch_of_requests_equals_each_alone(engine):
    prompts = [_prompt(n, seed=n) for n in (5, 23, 41)]
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    alone = [engine.generate(pr, p).token_ids for pr in prompts]
    ids = [engine.add_request(pr, p) for pr in prompts]
    got: dict[int, list[int]] = {i: [] for i in ids}
    while engine.has_work():
        for ev in engine.step():
            got[ev.request_id].append(ev.token_id)
    assert [got[i] for i in ids] == alone


def test_seed_makes_sampling_repeatable(engine):
    prompt = _prompt(12, seed=9)
    p = lambda seed: SamplingParams(max_tokens=8, temperature=1.0, seed=seed, ignore_eos=True)  # noqa: E731
    a, b, c = (engine.generate(prompt, p(s)).token_ids for s in (1, 1, 2))
    assert a == b and a != c


def test_top_k_one_is_greedy(engine):
    prompt = _prompt(10, seed=4)
    greedy = engine.generate(prompt, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)).token_ids
    topk1 = engine.generate(prompt, SamplingParams(max_tokens=5, temperature=2.0, top_k=1, seed=3,
                                                   ignore_eos=True)).token_ids
    assert topk1 == greedy


def test_stop_token_ids_and_logprobs(engine):
    prompt = _prompt(15, seed=5)
    chain = _argmax_chain(engine.model, prompt, 5)
    r = engine.generate(prompt, SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[chain[2]], logprobs=3))
    assert r.token_ids == chain[: chain.index(chain[2]) + 1] and r.finish_reason == "stop"
    lp = engine.model.logits(prompt)[-1].log_softmax(-1)
    first = r.logprobs[0]
    assert first.token_id == chain[0] and first.logprob == pytest.approx(lp[chain[0]].item(), abs=1e-5)
    assert [t for t, _ in first.top] == lp.topk(3).indices.tolist()


def test_stop_string_split_across_tokens_is_cut(engine):
    prompt = _prompt(20, seed=6)
    free = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    pieces = [engine.tokenizer.decode([t]) for t in free.token_ids]
    cut = len(pieces[0]) + len(pieces[1]) + len(pieces[2])
    stop = free.text[cut - 2 : cut + 2]  # straddles the 3rd and 4th tokens
    assert len(stop) == 4
    r = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, stop=[stop], ignore_eos=True))
    assert r.finish_reason == "stop" and r.text == free.text[: free.text.find(stop)]
    assert stop not in r.text


def test_abort_frees_the_request(engine):
    it = engine.stream(_prompt(30, seed=7), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    events = [next(it), next(it)]
    it.close()
    assert all(e.finish_reason is None for e in events)
    assert not engine.has_work() and not engine._live


def test_over_long_prompt_is_refused_before_any_work(engine):
    with pytest.raises(ContextLimitError) as e:
        engine.add_request(_prompt(450), SamplingParams())
    assert "450" in str(e.value) and "400" in str(e.value)
    assert not engine.has_work()


def test_prefill_progress_is_reported(engine):
    seen = []
    engine.generate(_prompt(40, seed=11), SamplingParams(max_tokens=1), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(16, 40), (32, 40), (40, 40)]


def test_prefix_cache_reuses_a_shared_prefix(engine):
    files, q1, q2 = _prompt(60, seed=12), _prompt(5, seed=13), _prompt(6, seed=14)
    p = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    first = engine.generate(files + q1, p, cache_prefix=len(files))
    assert first.usage.cached_tokens == 0
    seen = []
    second = engine.generate(files + q2, p, progress=lambda d, t: seen.append(d))
    assert second.usage.cached_tokens == 60 and seen == [66]  # only the question was read
    assert second.token_ids == _argmax_chain(engine.model, files + q2, 3)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


@pytest.mark.parametrize(("chunks", "stop", "want"), [
    (["Hello wor", "ld! END", " more"], ["END"], "Hello world! "),
    (["abc E", "N", "D tail"], ["END"], "abc "),
    (["no stop here", " at all"], ["END"], "no stop here at all"),
    (["x <|", "stop|> y"], ["<|stop|>", "zz"], "x "),
])
def test_stop_matcher_holds_back_partial_matches(chunks, stop, want):
    m = StopMatcher(stop)
    out = "".join(m.push(c) for c in chunks) + m.flush()
    assert out == want


def test_scheduler_interleaves_decodes_with_prompt_chunks():
    s = Scheduler(max_batch=2, chunk_size=10)
    a, b, c = Request([1] * 25, None), Request([1] * 4, None), Request([1] * 3, None)
    for r in (a, b, c):
        s.add(r)
    plan = s.schedule()
    assert [(r.id, n) for r, n in plan] == [(a.id, 10)]  # c waits: batch is full
    a.prefilled = 10
    assert [(r.id, n) for r, n in s.schedule()] == [(a.id, 10)]
    a.prefilled, a.output = 25, [5]
    assert [(r.id, n) for r, n in s.schedule()] == [(a.id, 1), (b.id, 4)]


def test_scheduler_admits_by_reserved_state_bytes():
    s = Scheduler(max_batch=8, chunk_size=100, state_budget=100)
    a, b, c = Request([1] * 5, None, reserve=60), Request([1] * 5, None, reserve=60), Request([1], None, reserve=30)
    for r in (a, b, c):
        s.add(r)
    assert [r.id for r, _ in s.schedule()] == [a.id]  # b does not fit beside a; c waits its turn (FIFO)
    s.remove(a)
    assert [r.id for r, _ in s.schedule()] == [b.id, c.id]


def test_engine_admission_is_limited_by_memory(engine):
    from v4cli.runtime.plan import MemoryPlanError, state_bytes

    one = state_bytes(engine.args, 30 + 4, dtype_bytes=engine.model.dtype.itemsize)
    tight = Engine(engine.model, engine.tokenizer, max_context=400, chunk_size=16, state_budget=int(one * 1.2))
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    prompts = [_prompt(30, seed=20), _prompt(30, seed=21)]
    ids = [tight.add_request(pr, p) for pr in prompts]
    got: dict[int, list[int]] = {i: [] for i in ids}
    most = 0
    while tight.has_work():
        for ev in tight.step():
            got[ev.request_id].append(ev.token_id)
        most = max(most, len(tight.scheduler.running))
    assert most == 1  # the second waited for the first's state to be freed
    assert [got[i] for i in ids] == [engine.generate(pr, p).token_ids for pr in prompts]
    with pytest.raises(MemoryPlanError, match="lower max_tokens"):
        tight.add_request(_prompt(30, seed=22), SamplingParams(max_tokens=300))


def test_greedy_picks_what_torch_argmax_picks():
    from v4cli.runtime.sampler import greedy

    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        x = torch.randn(1000, generator=g)
        x[torch.randint(0, 1000, (5,), generator=g)] = x.max()  # ties: the first maximum
        x[:10] = float("-inf")
        assert greedy(x) == int(x.argmax())
    x = torch.randn(1000, generator=g)
    x[[7, 500]] = float("nan")
    assert greedy(x) == int(x.argmax()) == 7  # a NaN counts as the maximum, the first one wins
    y = torch.randn(2, 300, generator=g)[:, ::3][1]  # a strided view and another dtype take their own paths
    assert greedy(y) == int(y.argmax()) and greedy(y.bfloat16()) == int(y.bfloat16().argmax())
