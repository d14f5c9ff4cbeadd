"""Prefix cache: a restored snapshot continues exactly like the original state, from RAM and from disk."""

import pytest
import torch

from v4cli.runtime import SeqState, load_model
from v4cli.runtime.prefix_cache import PrefixCache, model_key


@pytest.fixture(scope="module")
def model_and_path(ckpt_dir):
    path = ckpt_dir("flash")
    return load_model(path, simulate_quant=False), path


def _prefill(model, ids):
    st = SeqState.new(model.args)
    with torch.inference_mode():
        model(torch.tensor(ids), [st], [len(ids)])
    return st


def _continue(model, st, ids):
    with torch.inference_mode():
        return model.head_logits(model(torch.tensor(ids), [st], [len(ids)]))


def test_longest_prefix_hit_from_ram_and_disk(model_and_path, tmp_path):
    model, path = model_and_path
    key = model_key(path, False, torch.float32)
    ids = torch.randint(0, 1024, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    cache = PrefixCache(model.args, key, disk_dir=tmp_path)
    for n in (64, 150):
        cache.store(ids[:n], _prefill(model, ids[:n]))
    want = _continue(model, _prefill(model, ids[:150]), ids[150:])

    n, st = cache.lookup(ids)
    assert n == 150
    assert torch.equal(_continue(model, st, ids[150:]), want)
    n2, st2 = cache.lookup(ids)  # the lookup hands out copies: continuing one does not change the entry
    assert n2 == 150 and st2.pos == 150

    fresh = PrefixCache(model.args, key, disk_dir=tmp_path)  # a new process: only the disk copy
    n, st = fresh.lookup(ids)
    assert n == 150 and torch.equal(_continue(model, st, ids[150:]), want)

    other = ids[:100] + [(t + 1) % 1024 for t in ids[100:]]
    assert fresh.lookup(other)[0] == 64
    assert fresh.lookup(ids[:63])[0] == 0


def test_other_model_key_and_damaged_files_miss(model_and_path, tmp_path):
    model, path = model_and_path
    ids = list(range(100))
    PrefixCache(model.args, "key-a", disk_dir=tmp_path).store(ids, _prefill(model, ids))
    assert PrefixCache(model.args, "key-b", disk_dir=tmp_path).lookup(ids) == (0, None)
    for f in tmp_path.rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    assert PrefixCache(model.args, "key-a", disk_dir=tmp_path).lookup(ids) == (0, None)


def test_store_checks_the_state_matches(model_and_path):
    model, _ = model_and_path
    cache = PrefixCache(model.args, "k")
    with pytest.raises(ValueError, match="processed 40 tokens"):
        cache.store(list(range(50)), _prefill(model, list(range(40))))


def test_ram_budget_evicts_least_recently_used(model_and_path):
    model, _ = model_and_path
    one = _prefill(model, list(range(40))).nbytes()
    cache = PrefixCache(model.args, "k", ram_bytes=int(one * 2.5))
    seqs = [[i] * 40 for i in range(1, 5)]
    for s in seqs:
        cache.store(s, _prefill(model, s))
    assert len(cache.ram) == 2
    assert cache.lookup(seqs[0])[0] == 0 and cache.lookup(seqs[3])[0] == 40
