"""Grammar-constrained output (v4cli.grammar), driven by a random policy: random logits from a seeded
generator, then the argmax (or a sample) of what the processor leaves. The text is decoded with the real
tokenizer and parsed by `chat_format.parse_completion`; every answer must be one JSON object / schema-valid
tool calls, for every budget from the smallest the processor can close in upward (the cut-off path)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

from v4cli import grammar
from v4cli.chat_format import DSML_ID, EOS_ID, THINK_END_ID, load_tokenizer, parse_completion

WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "unit"],
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit", "kelvin"]},
        "days": {"type": "integer"},
        "alerts": {"type": "boolean"},
    }}}}
SEARCH = {"type": "function", "function": {"name": "search", "strict": True, "parameters": {
    "type": "object", "additionalProperties": False, "required": ["query", "filters"],
    "properties": {
        "query": {"type": "string"},
        "filters": {"type": "object", "additionalProperties": False, "required": ["tags", "lang"], "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "lang": {"type": "string", "enum": ["日本語", "français", "en"]},
            "since": {"type": "integer"},
            "exact": {"type": "boolean"},
        }},
        "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "note": {"type": ["string", "null"]},
    }}}}
NOTE = {"type": "function", "function": {"name": "note", "parameters": {  # not strict
    "type": "object", "properties": {"text": {"type": "string"}, "pinned": {"type": "boolean"}}}}}
TOOLS = [WEATHER, SEARCH, NOTE]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def tok():
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the policy's few torch ops on a shared machine
    yield load_tokenizer()
    torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def vocab(tok):
    v = grammar.vocab(tok)
    v.test_bias = np.array([len(b) <= 2 and b.isascii() for b in v.bytes_of], np.float32) * 3
    return v


def generate(proc, vocab, seed: int, *, sample: bool = False, push: list[int] = (), vocab_pad: int = 0) -> list[int]:
    """Random policy: uniform random logits, for even seeds with short ASCII tokens favoured (so the JSON
    gets structure; odd seeds write Unicode soup), ``push``ed tokens strongly favoured in order; then the
    argmax of what the processor leaves, or a sample from it."""
    rng = np.random.default_rng(seed)
    bias = np.concatenate([vocab.test_bias * (seed % 2 == 0), np.zeros(vocab_pad, np.float32)])
    ids: list[int] = []
    while len(ids) < proc.max_tokens:
        x = rng.random(len(bias), dtype=np.float32) * 4 + bias
        if len(ids) < len(push):
            x[push[len(ids)]] += 100
        out = proc(ids, torch.from_numpy(x)).numpy()
        assert out.shape == x.shape
        if sample:
            allowed = np.flatnonzero(np.isfinite(out))
            z = out[allowed] - np.log(-np.log(rng.random(len(allowed))))  # Gumbel-max: a sample at T=1
            token = int(allowed[z.argmax()])
        else:
            token = int(out.argmax())
        assert np.isfinite(out[token])
        if token == EOS_ID:
            break
        ids.append(token)
    return ids


def budgets(proc_min: int, upto: int = 64, at_least: int = 16) -> range:
    return range(proc_min, max(upto, proc_min + at_least) + 1)


def check_json(tok, ids: list[int], mode: str) -> dict:
    text = tok.decode(ids, skip_special_tokens=False)
    msg = parse_completion(text, mode)
    assert msg["warnings"] == [], (text, msg["warnings"])
    assert msg["tool_calls"] == []
    value = json.loads(msg["content"])
    assert isinstance(value, dict), text
    return msg


def check_calls(tok, ids: list[int], *, names: set[str], mode: str = "chat", every_schema: bool = True) -> list:
    """The calls parse without a repair, name known tools, and their arguments are JSON objects valid
    against the tool's schema (with ``every_schema`` False, only for strict tools: auto)."""
    text = tok.decode(ids, skip_special_tokens=False)
    msg = parse_completion(text, mode)
    assert msg["warnings"] == [], (text, msg["warnings"])
    calls = msg["tool_calls"]
    assert calls, text
    for call in calls:
        name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
        assert name in names and isinstance(args, dict), text
        if every_schema or TOOLS[list(SCHEMAS).index(name)]["function"].get("strict"):
            jsonschema.validate(args, SCHEMAS[name])
    return calls


# ---- JSON output ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("thinking", [False, True])
def test_json_object_every_budget(tok, vocab, thinking):
    mode = "thinking" if thinking else "chat"
    first = grammar.json_object(tok, thinking=thinking, max_tokens=10)
    assert first.min_tokens == (2 if thinking else 1)  # "{}", after "</think>" in thinking mode
    for n in budgets(first.min_tokens):
        proc = grammar.json_object(tok, thinking=thinking, max_tokens=n)
        ids = generate(proc, vocab, seed=n, sample=n % 2 == 1)
        assert len(ids) <= n
        check_json(tok, ids, mode)
        if thinking:
            assert ids.count(THINK_END_ID) == 1


def test_json_object_long_budgets_end_by_themselves_or_close(tok, vocab):
    for seed in range(3):
        proc = grammar.json_object(tok, thinking=False, max_tokens=300)
        check_json(tok, generate(proc, vocab, seed=100 + seed), "chat")


def test_after_the_object_only_eos(tok):
    proc = grammar.json_object(tok, thinking=False, max_tokens=100)
    ids = tok.encode('{"a": [1, {"b": "ü"}]}', add_special_tokens=False).ids
    out = proc(ids, torch.zeros(129280))
    assert np.flatnonzero(np.isfinite(out.numpy())).tolist() == [EOS_ID]


def test_a_tight_budget_forces_the_closing(tok):
    ids = tok.encode('{"abc": [1, {"x": "d', add_special_tokens=False).ids
    probe = grammar.json_object(tok, thinking=False, max_tokens=100)
    probe(ids, torch.zeros(129280))
    need = len(probe.plan(100))
    assert 2 <= need <= 5  # '"}', then a value after the comma is not needed: '"}]}' closes it all
    proc = grammar.json_object(tok, thinking=False, max_tokens=len(ids) + need)
    x = torch.zeros(129280)
    while len(ids) < proc.max_tokens:
        out = proc(ids, x)
        assert np.isfinite(out.numpy()).sum() == 1  # no slack left: one way to go
        ids.append(int(out.argmax()))
    value = json.loads(tok.decode(ids))
    assert value["abc"][0] == 1 and value["abc"][1]["x"].startswith("d")


def test_longer_logits_than_vocabulary_are_masked(tok, vocab):
    proc = grammar.json_object(tok, thinking=False, max_tokens=20)
    out = proc([], torch.full((vocab.size + 64,), 50.0))
    assert not np.isfinite(out.numpy()[vocab.size:]).any()
    ids = generate(grammar.json_object(tok, thinking=False, max_tokens=20), vocab, 3, vocab_pad=64)
    check_json(tok, ids, "chat")


def test_history_that_shrinks_rolls_back(tok, vocab):
    ids = generate(grammar.json_object(tok, thinking=True, max_tokens=40), vocab, seed=7)
    proc = grammar.json_object(tok, thinking=True, max_tokens=40)
    x = torch.randn(129280, generator=torch.Generator().manual_seed(0))
    for k in range(len(ids) + 1):
        proc(ids[:k], x)
    for k in (len(ids) // 2, 3, 0):  # a rejected speculative draft: history shorter than before
        fresh = grammar.json_object(tok, thinking=True, max_tokens=40)
        assert torch.equal(proc(ids[:k], x), fresh(ids[:k], x))


# ---- tool calls ----------------------------------------------------------------------------------------
def test_required_every_budget(tok, vocab):
    first = grammar.tool_calls(tok, TOOLS, choice="required", max_tokens=10)
    assert 10 < first.min_tokens < 40
    seen = set()
    for n in budgets(first.min_tokens, upto=80):
        proc = grammar.tool_calls(tok, TOOLS, choice="required", max_tokens=n)
        ids = generate(proc, vocab, seed=n, sample=n % 2 == 0)
        assert len(ids) <= n
        calls = check_calls(tok, ids, names=set(SCHEMAS))  # required: the non-strict tool's schema holds too
        seen |= {c["function"]["name"] for c in calls}
    assert len(seen) >= 2


@pytest.mark.parametrize("name", ["search", "get_weather"])
def test_named_every_budget(tok, vocab, name):
    first = grammar.tool_calls(tok, TOOLS, choice=name, max_tokens=10)
    for n in budgets(first.min_tokens, upto=0, at_least=24):
        proc = grammar.tool_calls(tok, TOOLS, choice=name, max_tokens=n)
        ids = generate(proc, vocab, seed=n, sample=n % 3 == 0)
        assert len(check_calls(tok, ids, names={name})) == 1


@pytest.mark.parametrize("thinking", [False, True])
def test_auto_after_the_trigger(tok, vocab, thinking):
    """Free content; once the model writes '<' and the DSML token, the block is constrained to the end."""
    mode = "thinking" if thinking else "chat"
    lead = tok.encode("Let me look.\n\n<", add_special_tokens=False).ids
    push = ([THINK_END_ID] if thinking else []) + lead + [DSML_ID]
    first = grammar.tool_calls(tok, TOOLS, choice="auto", thinking=thinking, max_tokens=10)
    assert first.min_tokens == (1 if thinking else 0)
    for n in budgets(len(push) + 25, upto=0, at_least=30):
        proc = grammar.tool_calls(tok, TOOLS, choice="auto", thinking=thinking, max_tokens=n)
        ids = generate(proc, vocab, seed=n, sample=n % 2 == 1, push=push)
        assert ids[: len(push)] == push
        check_calls(tok, ids, names=set(SCHEMAS), mode=mode, every_schema=False)  # note: any parameters
        assert parse_completion(tok.decode(ids, skip_special_tokens=False), mode)["content"] == "Let me look."


def test_auto_refuses_a_block_the_budget_cannot_close(tok, vocab):
    lead = tok.encode("Hi\n\n<", add_special_tokens=False).ids
    proc = grammar.tool_calls(tok, TOOLS, choice="auto", max_tokens=len(lead) + 8)
    out = proc(lead, torch.zeros(129280))
    assert not np.isfinite(out[DSML_ID].item())  # a block needs more than 8 tokens
    proc = grammar.tool_calls(tok, TOOLS, choice="auto", max_tokens=len(lead) + 60)
    assert np.isfinite(proc(lead, torch.zeros(129280))[DSML_ID].item())


def test_auto_content_stays_free(tok, vocab):
    proc = grammar.tool_calls(tok, TOOLS, choice="auto", max_tokens=200)
    out = proc(tok.encode("Plain text, {not json}", add_special_tokens=False).ids, torch.zeros(129280))
    assert np.isfinite(out.numpy()).sum() > 100_000  # text, EOS; no special token but DSML after '<'
    x = out.numpy()
    assert np.isfinite(x[EOS_ID]) and not np.isfinite(x[DSML_ID]) and not np.isfinite(x[THINK_END_ID])


def test_no_constraint_when_nothing_is_strict(tok):
    assert grammar.tool_calls(tok, [NOTE], choice="auto", max_tokens=50) is None
    assert grammar.tool_calls(tok, TOOLS, choice="none", max_tokens=50) is None
    assert grammar.tool_calls(tok, [NOTE], choice="required", max_tokens=50) is not None
    with pytest.raises(ValueError):
        grammar.tool_calls(tok, TOOLS, choice="missing", max_tokens=50)


def test_overhead_bench_runs():
    """The per-token cost is measured in bench/grammar_overhead.py (no wall-clock asserts here)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "grammar_overhead.py"
    spec = importlib.util.spec_from_file_location("grammar_overhead", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.overhead(n_tokens=20)
    assert rows["json llguidance mask+apply"]["n"] >= 20 and rows["tools processor (budget tight)"]["n"] >= 20


def test_json_content_with_tools_under_auto(tok, vocab):
    """response_format json_object with tools: the content is one JSON object, a block may follow."""
    proc = grammar.tool_calls(tok, [NOTE], choice="auto", max_tokens=40, json_content=True)
    check_json(tok, generate(proc, vocab, seed=5), "chat")
    push = tok.encode('{"a": 1}\n\n<', add_special_tokens=False).ids + [DSML_ID]
    for n in range(len(push) + 26, len(push) + 44, 3):  # a block after "}\n\n" needs 26 tokens or more
        proc = grammar.tool_calls(tok, TOOLS, choice="auto", max_tokens=n, json_content=True)
        ids = generate(proc, vocab, seed=n, push=push)
        check_calls(tok, ids, names=set(SCHEMAS), every_schema=False)
        assert json.loads(parse_completion(tok.decode(ids, skip_special_tokens=False), "chat")["content"]) == {"a": 1}
