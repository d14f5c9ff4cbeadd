"""The hub package against a loopback stand-in for the Hub (tests/hubserver.py) serving a tiny checkpoint
in the hub's layout."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from huggingface_hub import constants, file_download

from hubserver import FakeHub
from v4cli import hub

REPO = "deepseek-ai/DeepSeek-V4-Flash"
SHARD = "model-00002-of-00003.safetensors"


@pytest.fixture
def fake(ckpt_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running fake hub holding REPO, with HF_ENDPOINT / HF_HUB_CACHE / V4_HOME pointed at it and tmp dirs."""
    with FakeHub() as h:
        h.add(REPO, ckpt_dir("flash"))
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("V4_HOME", str(tmp_path / "v4"))
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
        # huggingface_hub waits 1 s before each in-pull resume; tests need not
        monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda s: None))
        yield h


def _total(h: FakeHub) -> int:
    return sum(len(d) for d in h.repos[REPO].files.values())


def test_pull_verify_list_show_rm(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    seen: list[tuple[int, int]] = []
    path = hub.pull("flash", progress=lambda done, total: seen.append((done, total)))
    assert path.parent.parent.name == "models--deepseek-ai--DeepSeek-V4-Flash"
    assert path.name == fake.repos[REPO].commit
    assert sorted(p.name for p in path.iterdir()) == sorted(fake.repos[REPO].files)
    assert seen[-1] == (_total(fake), _total(fake))  # the callback ends at 100% of the planned bytes
    assert "Bearer hf_secret" in fake.auth  # HF_TOKEN reaches the Hub
    assert hub.verify(path) == [] and hub.verify(path, checksums=True) == []

    models = {m.name: m for m in hub.list_models()}
    assert models["flash"].kind == "hub" and models["flash"].size_bytes == _total(fake)
    assert models["flash"].revision == fake.repos[REPO].commit
    r = hub.resolve("flash")
    assert (r.kind, r.path, r.repo_id) == ("hub", path, REPO)
    assert hub.resolve(REPO).path == path  # the repo id resolves like its alias

    info = hub.show("flash", context=8192)
    assert (info["layers"], info["mtp_layers"], info["routed_experts"], info["hidden_size"]) == (5, 1, 8, 256)
    assert info["layer_types"] == {"sliding window": 2, "CSA (ratio 4)": 2, "HCA (ratio 128)": 1}
    assert info["quantization"] == "FP8 e4m3 weights, FP4 experts"
    assert info["disk_bytes"] == _total(fake)
    assert info["memory_plan"]["context"] == 8192 and "memory plan" in info["memory_plan"]["text"]
    assert info["memory_plan"]["total_bytes"] > info["memory_plan"]["weights_bytes"] > 0

    n = len(fake.log)
    assert hub.pull("flash") == path  # already complete: nothing is downloaded again
    assert not [m for m in fake.log[n:] if m[0] == "GET" and "/resolve/" in m[1]]

    assert hub.remove("flash") == _total(fake)
    assert not path.exists() and "flash" not in {m.name for m in hub.list_models()}
    with pytest.raises(hub.ModelNotFound, match=r"not pulled yet: run `v4 pull flash`"):
        hub.resolve("flash")
    with pytest.raises(hub.ModelNotFound, match="nothing to remove"):
        hub.remove("flash")


def test_connection_cut_mid_file_resumes_with_range(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # small chunks so half a file reaches disk
    fake.cut_once.add(SHARD)
    path = hub.pull("flash")
    ranges = fake.gets(SHARD)
    assert ranges[0] is None and len(ranges) == 2
    start = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the resume asks only for the rest
    assert 0 < start < len(fake.repos[REPO].files[SHARD])
    assert (path / SHARD).read_bytes() == fake.repos[REPO].files[SHARD]
    assert hub.verify(path, checksums=True) == []


def test_interrupted_pull_then_second_pull_completes(fake: FakeHub) -> None:
    fake.cut_always.add(SHARD)  # the connection keeps dropping: huggingface_hub gives up after its retries
    with pytest.raises(hub.PullError, match=r"download of deepseek-ai/DeepSeek-V4-Flash stopped.*v4 pull flash"):
        hub.pull("flash")
    tries = len(fake.gets(SHARD))
    assert tries >= 2  # huggingface_hub tried to resume before giving up (5 times in 2.4)
    with pytest.raises(hub.ModelNotFound, match="not pulled yet"):  # a half-pulled model is not offered...
        hub.resolve("flash")
    fake.cut_always.clear()
    path = hub.pull("flash")
    assert hub.verify(path) == []
    for name in fake.repos[REPO].files:  # ...and the second pull fetched only what was missing
        assert len(fake.gets(name)) == (tries + 1 if name == SHARD else 1), name


def test_corrupt_shard_from_the_hub_is_reported(fake: FakeHub) -> None:
    files = fake.repos[REPO].files
    files[SHARD] = files[SHARD][: len(files[SHARD]) // 2]  # the hub itself holds a truncated shard
    with pytest.raises(hub.PullError) as err:
        hub.pull("flash")
    msg = str(err.value)
    assert "not usable" in msg and SHARD in msg and "v4 rm flash" in msg


def test_corrupt_blob_on_disk_is_found_by_verify(fake: FakeHub) -> None:
    path = hub.pull("flash")
    blob = (path / SHARD).resolve()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-100:] = bytes(100)  # same size, header intact: only the checksum can tell
    blob.write_bytes(bytes(data))
    assert hub.verify(path) == []
    problems = hub.verify(path, checksums=True)
    assert len(problems) == 1 and SHARD in problems[0] and "checksum" in problems[0]

    blob.write_bytes(bytes(data[:1000]))  # truncated: sizes listed by the Hub and the shard header disagree
    problems = hub.verify(path, {SHARD: len(data)})
    assert any(f"{SHARD} has 1,000 bytes but the Hub lists {len(data):,}" == p for p in problems)
    assert any(SHARD in p and ("truncated" in p or "does not fit" in p) for p in problems)


def test_unknown_repo_revision_and_name(fake: FakeHub) -> None:
    with pytest.raises(hub.ModelNotFound, match=r"no model nobody/missing on http://127\.0\.0\.1"):
        hub.pull("nobody/missing")
    with pytest.raises(hub.ModelNotFound, match=r"has no revision 'v9'"):
        hub.pull("flash", revision="v9")
    with pytest.raises(hub.ModelNotFound, match=r"unknown model 'not a model'"):
        hub.pull("not a model")
    with pytest.raises(hub.ModelNotFound, match=r"unknown model 'gpt-9': use flash, pro, tiny, a Hub repo id"):
        hub.resolve("gpt-9")


def test_not_enough_disk(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.env.shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**6, used=0, free=1000))
    with pytest.raises(hub.NotEnoughDisk) as err:
        hub.pull("flash")
    assert (err.value.need, err.value.free) == (_total(fake), 1000)
    assert f"{_total(fake):,} bytes" in str(err.value) and "1,000 bytes" in str(err.value)
    assert not [m for m in fake.log if m[0] == "GET" and "/resolve/" in m[1]]  # refused before downloading


def test_offline_mode(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.PullError, match=r"offline mode is on .* not in the cache"):
        hub.pull("flash")
    assert fake.log == []  # offline means no request at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = hub.pull("flash")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(fake.log)
    assert hub.pull("flash") == path and len(fake.log) == n  # cached: served offline, still verified
    blob = (path / "tokenizer.json").resolve()
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[:-10])  # sizes come from the tree listing cached at download time
    with pytest.raises(hub.PullError, match=r"tokenizer\.json has [\d,]+ bytes but the Hub lists"):
        hub.pull("flash")


def test_include_patterns_add_the_essentials(fake: FakeHub) -> None:
    fake.repos[REPO].files["figures/plot.png"] = b"\x89PNG"
    path = hub.pull("flash", include=["*.safetensors"])
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()  # always fetched
    assert not (path / "figures").exists() and fake.gets("plot.png") == []
    path2 = hub.pull("flash")  # the default patterns skip figures too
    assert path2 == path and not (path / "figures").exists()


def test_resolve_tiny_local_and_rm_refusal(tmp_path: Path, ckpt_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "v4"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert hub.resolve("tiny", materialize=False).path == tmp_path / "v4" / "models" / "tiny"
    assert hub.list_models() == []
    r = hub.resolve("tiny")
    assert r.kind == "builtin" and hub.verify(r.path) == [] and (r.path / "tokenizer.json").exists()
    assert hub.show("tiny")["vocab_size"] == 129280  # the real tokenizer's vocabulary
    assert [(m.name, m.kind) for m in hub.list_models()] == [("tiny", "builtin")]

    local = ckpt_dir("flash")
    assert hub.resolve(str(local)) == hub.ResolvedModel(str(local), "local", local.resolve())
    with pytest.raises(hub.HubError, match="v4 does not delete it"):
        hub.remove(str(local))
    with pytest.raises(hub.PullError, match="is a local folder"):
        hub.pull(str(local))
    assert (local / "config.json").exists()

    assert hub.remove("tiny") > 100_000_000 and not r.path.exists()


def test_shipped_configs_are_the_official_values() -> None:
    # architecture.md §1.1: the keys ModelArgs reads, plus the informational ones it ignores
    import dataclasses

    from v4cli.runtime.args import ModelArgs

    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    informational = {"architectures", "hidden_act", "topk_method", "attention_bias"}
    want = {"flash": (4096, 43, 64, 1024, 8, 256, 2048, 1.5, 512, [0, 0] + [4, 128] * 20 + [4, 0]),
            "pro": (7168, 61, 128, 1536, 16, 384, 3072, 2.5, 1024, [128, 128] + [4, 128] * 29 + [4, 0])}
    for name, values in want.items():
        raw = hub.known_config(name)
        assert raw is not None and set(raw) - fields == informational, name
        a = ModelArgs.from_dict(raw)
        assert (a.hidden_size, a.num_hidden_layers, a.num_attention_heads, a.q_lora_rank, a.o_groups,
                a.n_routed_experts, a.moe_intermediate_size, a.routed_scaling_factor, a.index_topk,
                a.compress_ratios) == values, name
        assert (a.max_position_embeddings, a.fp8_weights, a.fp4_experts, a.num_nextn_predict_layers) == \
            (1048576, True, True, 1)
        assert hub.known_config(hub.ALIASES[name]) == raw  # the repo id finds it too
    assert hub.known_config("tiny") is None and hub.known_config("someone/else") is None


def test_names_written_as_paths_are_never_repo_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_HOME", str(tmp_path / "v4"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for path in ("./nonsense", "../x", "~/models/x", "/abs/path", "a/b/c", ".hidden/x", "a--b/c", "a/b..c"):
        assert hub.repo_id_of(path) is None, path
    for repo in ("deepseek-ai/DeepSeek-V4-Flash", "me/my.model_v2", "Org/x"):
        assert hub.repo_id_of(repo) == repo
    with pytest.raises(hub.ModelNotFound, match=r"'./nonsense': no such folder\. Use flash, pro, tiny"):
        hub.resolve("./nonsense")
    with pytest.raises(hub.ModelNotFound, match="no such folder"):
        hub.pull("./nonsense")
