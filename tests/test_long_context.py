"""A 128K-token prefill of a tiny model runs in bounded memory (slow: run with `-m slow`).

The prefill runs in a fresh interpreter so ru_maxrss holds only that run. Its growth from the peak after a
warm-up (weights loaded, first chunks run: every per-chunk buffer allocated once) to the end must stay below

    state bytes at 128K + the indexer's per-chunk score rows at the end + its blocked intermediates + a margin,

where the score rows are the [chunk, ctx/4] FP32 tensors the lightning indexer builds per CSA layer call
(scores, their masked copy, the mask; they grow with the position but are freed after each layer), the
blocked intermediates are ops_ref.indexer_scores' [rows, H, T] dots and their weighted copy (capped at 2^24
floats = 64 MiB each) and the margin (64 MiB) covers allocator slack. Measured on 2026-11-28: growth 301 MiB,
state 65 MiB, bound 449 MiB. A dense KV cache or an O(ctx^2) score matrix would need many times that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from v4cli.runtime.tiny import tiny_args, write_checkpoint

CTX = 131072
CHUNK = 512
WARMUP = 4  # chunks run before the baseline peak is taken
MARGIN = 64 << 20
BLOCKED = 2 * 4 << 24  # ops_ref._rows_per_block's 2^24-float budget, for the dots and their weighted copy

CHILD = """
import json, resource, sys, torch
from v4cli.runtime.cache import SeqState
from v4cli.runtime.weights import load_model

path, ctx, chunk, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = load_model(path, dtype=torch.float32)
tokens = torch.randint(0, model.args.vocab_size, (ctx,), generator=torch.Generator().manual_seed(0))
state = SeqState.new(model.args, torch.float32)
base = 0
with torch.inference_mode():
    for i, s in enumerate(range(0, ctx, chunk)):
        n = min(chunk, ctx - s)
        model(tokens[s : s + n], [state], [n])
        if i + 1 == warm:
            base, base_state = rss(), state.nbytes()
print(json.dumps(dict(base=base, base_state=base_state, peak=rss(), pos=state.pos, nbytes=state.nbytes(),
                      ratios=model.args.compress_ratios[: model.args.num_hidden_layers],
                      entries=[ls.comp.entries.n if ls.comp else 0 for ls in state.layers],
                      keys=[ls.index.entries.n if ls.index else 0 for ls in state.layers])))
"""


@pytest.mark.slow
@pytest.mark.timeout(2000)  # the child has 1,800 s of its own
def test_128k_prefill_bounded_memory(tmp_path: Path) -> None:
    # Few indexer heads keep the O(ctx^2 / chunk) scoring quick; the state layout is the built-in model's.
    args = tiny_args("flash", vocab_size=1024, sliding_window=128, index_topk=64, index_n_heads=4)
    path = write_checkpoint(tmp_path / "ckpt", args, tokenizer=False)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(CTX), str(CHUNK), str(WARMUP)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])

    assert r["pos"] == CTX
    for ratio, entries, keys in zip(r["ratios"], r["entries"], r["keys"], strict=True):
        assert entries == (CTX // ratio if ratio else 0)
        assert keys == (CTX // 4 if ratio == 4 else 0)
    assert r["entries"].count(CTX // 4) == 2 and r["entries"].count(CTX // 128) == 1

    n_csa = r["ratios"].count(4)
    score_rows = 3 * CHUNK * (CTX // 4) * 4  # scores, masked copy (FP32) and the mask, one CSA layer at a time
    bound = r["nbytes"] + score_rows + BLOCKED + MARGIN
    growth = r["peak"] - r["base"]
    print(f"\npeak RSS growth {growth / 2**20:.0f} MiB; state {r['nbytes'] / 2**20:.0f} MiB "
          f"({n_csa} CSA layers); bound {bound / 2**20:.0f} MiB")
    assert growth < bound, (growth, bound)
