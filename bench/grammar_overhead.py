"""Per-token cost of grammar-constrained decoding: llguidance (what `v4cli.grammar` uses) and xgrammar, side by side.

One token sequence per grammar is drawn by a random policy through our processor (random logits, short ASCII
tokens favoured so the JSON has structure); then each library replays it, and the time to compute the mask and
apply it to FP32 logits [129280] is taken token by token. Rows: llguidance raw (mask + apply), our whole
processor (mask, apply and the budget planner, far from and near the end of the budget), xgrammar raw for the
same JSON-object constraint. No asserts: numbers only.

    python bench/grammar_overhead.py [--tokens 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch

TOOLS = [{"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "unit", "days"],
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer"}, "hours": {"type": "array", "items": {"type": "integer"}}}}}}]


def _policy(vocab: Any, seed: int):
    rng = np.random.default_rng(seed)
    short = np.array([len(b) <= 2 and b.isascii() for b in vocab.bytes_of], np.float32) * 2

    def logits() -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(vocab.size, dtype=np.float32) + short)
    return logits


def _drive(make, vocab: Any, n: int, seed: int) -> tuple[list[list[int]], list[float]]:
    """Answers from fresh processors (``make(answer index)``) until n tokens in all; returns the answers
    and each processor call's seconds."""
    answers: list[list[int]] = []
    times: list[float] = []
    while sum(map(len, answers)) < n:
        proc, draw, ids = make(len(answers)), _policy(vocab, seed + len(answers)), []
        while len(ids) < proc.max_tokens and sum(map(len, answers)) + len(ids) < n:
            x = draw()
            t0 = time.perf_counter()
            out = proc(ids, x)
            times.append(time.perf_counter() - t0)
            token = int(out.argmax())
            if token == 1:
                break
            ids.append(token)
        answers.append(ids)
    return answers, times


def _apply(bitmask: np.ndarray, x: torch.Tensor, size: int) -> torch.Tensor:
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:size].view(bool)
    return torch.from_numpy(np.where(allowed, x.numpy(), np.float32(-np.inf)))


def _replay_llguidance(vocab: Any, grammar: str, answers: list[list[int]]) -> tuple[list[float], list[float]]:
    """(mask seconds, mask + apply seconds) per token."""
    masks, totals = [], []
    x = torch.randn(vocab.size)
    for ids in answers:
        m = vocab.matcher(grammar)
        for t in ids:
            t0 = time.perf_counter()
            bitmask = m.compute_bitmask()
            t1 = time.perf_counter()
            _apply(np.frombuffer(bitmask, np.int32), x, vocab.size)
            masks.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
            m.consume_token(t)
    return masks, totals


def _replay_xgrammar(vocab: Any, answers: list[list[int]]) -> tuple[list[float], list[float]] | str:
    try:
        import xgrammar as xgr
    except ImportError:
        return "xgrammar not installed"
    special = {i for i in range(vocab.size) if vocab.ll.is_special_token(i)}
    info = xgr.TokenizerInfo([b"" if i in special else b for i, b in enumerate(vocab.bytes_of)],
                             xgr.VocabType.RAW, vocab_size=vocab.size, stop_token_ids=[1])
    compiled = xgr.GrammarCompiler(info).compile_json_schema({"type": "object"})
    masks: list[float] = []
    totals: list[float] = []
    bitmask = xgr.allocate_token_bitmask(1, vocab.size)
    x = torch.randn(vocab.size)
    for ids in answers:
        m = xgr.GrammarMatcher(compiled)
        for t in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(bitmask)
            t1 = time.perf_counter()
            _apply(bitmask.numpy()[0], x, vocab.size)
            masks.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
            if not m.accept_token(t):
                return f"xgrammar refused token {t} after {len(masks)} tokens"
    return masks, totals


def _us(times: list[float] | str) -> dict[str, float] | str:
    if isinstance(times, str):
        return times
    return {"mean_us": 1e6 * statistics.fmean(times), "median_us": 1e6 * statistics.median(times), "n": len(times)}


def overhead(n_tokens: int = 300, seed: int = 0) -> dict[str, Any]:
    """Mean/median µs per token for each row (see the module docstring)."""
    from v4cli import grammar
    from v4cli.chat_format import load_tokenizer
    from v4cli.grammar.lark import json_grammar, tools_grammar

    tok = load_tokenizer()
    vocab = grammar.vocab(tok)
    rows: dict[str, Any] = {}
    far = 10 * n_tokens  # the budget far away: the planner runs every 8th token
    json_far = lambda i: grammar.json_object(tok, thinking=False, max_tokens=far)
    answers, t_far = _drive(json_far, vocab, n_tokens, seed)
    tight = [len(a) for a in answers]  # the same answers again, each with its own length as the budget
    _, t_near = _drive(lambda i: grammar.json_object(tok, thinking=False, max_tokens=tight[i]), vocab, n_tokens, seed)
    for lib, replay in (("llguidance", _replay_llguidance(vocab, json_grammar(thinking=False), answers)),
                        ("xgrammar", _replay_xgrammar(vocab, answers))):
        rows[f"json {lib} mask"] = _us(replay if isinstance(replay, str) else replay[0])
        rows[f"json {lib} mask+apply"] = _us(replay if isinstance(replay, str) else replay[1])
    rows["json processor (budget far)"] = _us(t_far)
    rows["json processor (budget tight)"] = _us(t_near)
    tools = lambda n: grammar.tool_calls(tok, TOOLS, choice="required", thinking=False, max_tokens=n)
    answers, t_far = _drive(lambda i: tools(far), vocab, n_tokens, seed)
    masks, totals = _replay_llguidance(vocab, tools_grammar(TOOLS, choice="required", thinking=False), answers)
    rows["tools llguidance mask"], rows["tools llguidance mask+apply"] = _us(masks), _us(totals)
    rows["tools processor (budget far)"] = _us(t_far)
    tight = [max(len(a), 100) for a in answers]
    _, t_near = _drive(lambda i: tools(tight[i]), vocab, n_tokens, seed)
    rows["tools processor (budget tight)"] = _us(t_near)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{'row':34} {'mean µs':>9} {'median µs':>10} {'tokens':>7}")
    for name, r in overhead(args.tokens, args.seed).items():
        if isinstance(r, str):
            print(f"{name:34} {r}")
        else:
            print(f"{name:34} {r['mean_us']:9.0f} {r['median_us']:10.0f} {r['n']:7d}")


if __name__ == "__main__":
    main()
