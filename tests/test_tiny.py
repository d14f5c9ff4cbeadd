"""The built-in model's one habit: sampled, it ends its turns; greedy, it never stops early."""

from pathlib import Path

import pytest

from v4cli import chat_format as cf
from v4cli.runtime import Engine, SamplingParams
from v4cli.runtime.tiny import BUILTIN_VERSION, TurnEnds, builtin_args, ensure_builtin, random_tensors


@pytest.fixture(scope="module")
def engine(serve_home: Path) -> Engine:
    return Engine.from_pretrained(serve_home / "models" / "tiny", simulate_quant=False, max_context=2048)


def _prompt(i: int, mode: str) -> list[int]:
    text = cf.encode_messages([{"role": "user", "content": f"question {i}: say hi"}], thinking_mode=mode)
    return cf.load_tokenizer().encode(text, add_special_tokens=False).ids


def _run(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple[list[int], str]]:
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    out: dict[int, list[int]] = {i: [] for i in ids}
    reason: dict[int, str] = {}
    while engine.has_work():
        for ev in engine.step():
            if ev.token_id >= 0:
                out[ev.request_id].append(ev.token_id)
            if ev.finish_reason:
                reason[ev.request_id] = ev.finish_reason
    return [(out[i], reason[i]) for i in ids]


def test_sampled_turns_end_and_thinking_closes_first(engine: Engine) -> None:
    prompts = [_prompt(i, mode) for mode in ("chat", "thinking") for i in range(6)]
    params = [SamplingParams(max_tokens=400, temperature=1.0, seed=i) for i in range(12)]
    runs = _run(engine, prompts, params)
    assert [reason for _, reason in runs] == ["stop"] * 12  # every turn ended by EOS, none by the budget
    assert all(ids[-1] == cf.EOS_ID for ids, _ in runs)
    closed = [cf.THINK_END_ID in ids for ids, _ in runs[6:]]
    assert sum(closed) >= 3, closed  # most thinking ends before the turn does


def test_greedy_never_stops_early(engine: Engine) -> None:
    prompts = [_prompt(i, mode) for mode in ("chat", "thinking") for i in range(3)]
    runs = _run(engine, prompts, [SamplingParams(max_tokens=64, temperature=0)] * 6)
    for ids, reason in runs:
        assert reason == "length" and len(ids) == 64
        assert cf.EOS_ID not in ids and cf.THINK_END_ID not in ids


def test_the_habit_is_only_in_the_builtin_and_rewrites_an_old_copy(tmp_path: Path) -> None:
    args = builtin_args()
    plain = random_tensors(args, seed=0)
    shaped = random_tensors(args, seed=0, turn_ends=TurnEnds(eos=1, think_end=2, special=frozenset({0, 1, 2})))
    quiet = TurnEnds.channels(args.hidden_size)
    # no block writes the channels, so what the embedding puts there reaches the head as it was
    assert plain["layers.0.attn.wo_b.weight"].float()[quiet].abs().sum() > 0
    assert shaped["layers.0.attn.wo_b.weight"].float()[quiet].abs().sum() == 0
    assert (shaped["layers.0.attn.wq_a.weight"] == plain["layers.0.attn.wq_a.weight"]).all()
    folder = ensure_builtin(tmp_path / "tiny")
    stamp = folder / "v4-builtin.json"
    assert f'"builtin_version": {BUILTIN_VERSION}' in stamp.read_text()
    stamp.write_text(stamp.read_text().replace(f'"builtin_version": {BUILTIN_VERSION}', '"builtin_version": 1'))
    ensure_builtin(folder)  # a copy written by an older v4 is replaced, not served
    assert f'"builtin_version": {BUILTIN_VERSION}' in stamp.read_text()
