"""Models on disk: resolve names, pull from the Hugging Face Hub, verify, list, show and remove.

Hub repos live in the standard HF cache (HF_HOME / HF_HUB_CACHE), so other tools share the download;
`huggingface_hub` does the transfer (Range-resume of a cut connection inside a pull; finished files are
kept, so a second pull fetches only what is missing). The built-in `tiny` model lives in models_dir().
HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE are read at call time, not import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_cached_repo_tree, scan_cache_dir, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    CacheNotFound,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import (
    filter_repo_objects,
    tqdm,  # its subclasses get the bar's `name`, so we can pick the bytes bar
)

from .errors import UserError
from .settings import models_dir

BUILTIN = "tiny"
ALIASES: dict[str, str] = {"flash": "deepseek-ai/DeepSeek-V4-Flash", "pro": "deepseek-ai/DeepSeek-V4-Pro",
                           BUILTIN: "builtin:tiny"}
# What a V4 checkpoint needs (weights, index, config, tokenizer) plus the small docs; skips figures and code.
DEFAULT_INCLUDE = ["*.json", "*.safetensors", "*.md", "LICENSE*"]
# Always fetched with user --include patterns: without them nothing pulled can run (all small).
ESSENTIAL = ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json"]
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
Progress = Callable[[int, int], None]  # (bytes done, bytes to download)


class HubError(UserError):
    """A model operation that cannot be done; the message says why and what to do."""


class ModelNotFound(HubError):
    pass


class PullError(HubError):
    pass


class NotEnoughDisk(PullError):
    def __init__(self, need: int, free: int, where: Path) -> None:
        self.need, self.free, self.where = need, free, where
        super().__init__(f"not enough disk space in {where}: the pull needs {_size(need)} ({need:,} bytes) "
                         f"but only {_size(free)} ({free:,} bytes) is free")


@dataclass
class ResolvedModel:
    name: str
    kind: str  # "builtin" | "local" | "hub"
    path: Path | None
    repo_id: str | None = None
    revision: str | None = None


@dataclass
class ModelInfo:
    name: str
    path: Path
    size_bytes: int
    kind: str
    revision: str | None = None


# ---- environment, read per call so tests and users can change it -------------------------------------
def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return env.upper() in {"1", "ON", "YES", "TRUE"} if env is not None else constants.is_offline_mode()


def _token(token: str | None) -> str | None:
    return token or os.environ.get("HF_TOKEN") or None  # None: huggingface_hub falls back to `hf auth login`


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _folder_size(path: Path) -> int:
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file():
            real = p.resolve()  # HF snapshots are symlinks into blobs/: count each blob once
            if real not in seen:
                seen.add(real)
                total += real.stat().st_size
    return total


# ---- resolving names ----------------------------------------------------------------------------------
def repo_id_of(name: str) -> str | None:
    """The repo id a name stands for (an alias or `owner/name`), or None."""
    if name in ALIASES and name != BUILTIN:
        return ALIASES[name]
    return name if _REPO_ID.match(name) else None


def _is_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").exists()


def _local(name: str) -> Path | None:
    """The folder `name` names: a model folder, or any folder written as a path (`./x`, `~/x`, `a/b`)."""
    local = Path(name).expanduser()
    if _is_model_dir(local) or (local.is_dir() and (os.sep in name or name.startswith((".", "~")))):
        return local.resolve()
    return None


def resolve(name: str, revision: str | None = None, materialize: bool = True) -> ResolvedModel:
    """Find the folder of a model: a local folder path, `tiny`, an alias or a pulled repo id."""
    if (local := _local(name)) is not None:
        return ResolvedModel(name, "local", local)
    if name == BUILTIN:
        folder = models_dir() / BUILTIN
        if materialize:
            from .runtime.tiny import ensure_builtin  # torch-heavy: only when the built-in is wanted

            ensure_builtin(folder)
        return ResolvedModel(name, "builtin", folder)
    if "/" not in name and _is_model_dir(models_dir() / name):  # a folder the user placed in models_dir()
        return ResolvedModel(name, "local", models_dir() / name)
    repo = repo_id_of(name)
    if repo is None:
        raise ModelNotFound(f"unknown model {name!r}: use an alias ({', '.join(ALIASES)}), a Hub repo id "
                            f"(owner/name) or a model folder.{_available()}")
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):
        raise ModelNotFound(f"{name} ({repo}) is not pulled yet: run `v4 pull {name}`.{_available()}") from None
    return ResolvedModel(name, "hub", Path(path), repo, Path(path).name)


def _available() -> str:
    try:
        names = [m.name for m in list_models()]
    except Exception:  # listing is a courtesy in an error message; never mask the real error
        names = []
    return f" Available: {', '.join(names)}." if names else " Nothing is pulled yet (`tiny` is always available)."


# ---- pulling ------------------------------------------------------------------------------------------
class _CallbackBar(tqdm):
    """A silent tqdm that reports the snapshot's bytes-written bar to a callback (the CLI draws its own)."""

    callback: Progress | None = None
    total_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name, desc = kwargs.pop("name", None), str(kwargs.get("desc") or "")
        self._report = name == "huggingface_hub.snapshot_download" or (name is None and desc.startswith("Reconstruct"))
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        self.done, self._lock = 0, threading.Lock()

    def update(self, n: float | None = 1) -> bool | None:
        with self._lock:  # download threads share the bar; the callback runs on them, one at a time
            self.done += int(n or 0)
            if self._report and self.callback is not None:
                self.callback(self.done, self.total_bytes)
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:  # rate text: nothing to show
        return None

    @property
    def format_dict(self) -> dict[str, Any]:  # a disabled bar has no timing state
        return {"rate": None}


def _bar_class(progress: Progress | None, total: int) -> type[tqdm] | None:
    if progress is None:
        return None  # huggingface_hub's own bars
    return type("_Bar", (_CallbackBar,), {"callback": staticmethod(progress), "total_bytes": total})


def _free_bytes(folder: Path) -> int:
    p = folder
    while not p.exists() and p != p.parent:  # the cache folder may not exist before the first pull
        p = p.parent
    return shutil.disk_usage(p).free


def pull(name: str, revision: str | None = None, include: list[str] | None = None, token: str | None = None,
         progress: Progress | None = None, checksums: bool = False) -> Path:
    """Download (or complete) a model into the HF cache, check it, and return its snapshot folder."""
    if name == BUILTIN:
        return resolve(name).path  # type: ignore[return-value]
    if _local(name) is not None:
        raise PullError(f"{name} is a local folder: nothing to pull, use it as --model {name}")
    repo = repo_id_of(name)
    if repo is None:
        raise ModelNotFound(f"unknown model {name!r}: use flash, pro or a Hub repo id (owner/name)")
    patterns = DEFAULT_INCLUDE if not include else sorted(set(include) | set(ESSENTIAL))
    where, tok = cache_dir(), _token(token)
    common: dict[str, Any] = dict(revision=revision, cache_dir=where, allow_patterns=patterns, token=tok)
    if offline():
        try:
            path = Path(snapshot_download(repo, local_files_only=True, **common))
        except LocalEntryNotFoundError:
            raise PullError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not in the cache at {where}: "
                            "unset HF_HUB_OFFLINE to download it") from None
        return _checked(path, name, _cached_sizes(repo, path.name, patterns), checksums)
    try:  # the plan first: sizes of every file and which ones are already here
        plan = snapshot_download(repo, endpoint=endpoint(), dry_run=True, tqdm_class=_bar_class(lambda *_: None, 0),
                                 **common)
    except Exception as e:
        raise _explain(e, repo, revision) from None
    if not plan:
        raise PullError(f"no file of {repo} matches {', '.join(patterns)}")
    sizes = {f.filename: f.file_size for f in plan if f.file_size is not None}
    missing = sum(f.file_size or 0 for f in plan if f.will_download)
    free = _free_bytes(where)
    if missing > free:
        raise NotEnoughDisk(missing, free, where)
    try:
        path = Path(snapshot_download(repo, endpoint=endpoint(), tqdm_class=_bar_class(progress, missing), **common))
    except Exception as e:
        raise _explain(e, repo, revision, name) from None
    return _checked(path, name, sizes, checksums)


def _cached_sizes(repo: str, commit: str, patterns: list[str]) -> dict[str, int]:
    """File sizes from the tree listing huggingface_hub cached at download time (none: nothing to compare)."""
    try:
        tree = {f.path: f.size for f in get_cached_repo_tree(repo, revision=commit, cache_dir=cache_dir())}
    except CachedRepoTreeNotFoundError:
        return {}
    return {p: tree[p] for p in filter_repo_objects(tree, allow_patterns=patterns)}


def _checked(path: Path, name: str, sizes: dict[str, int], checksums: bool) -> Path:
    problems = verify(path, sizes, checksums)
    if problems:
        raise PullError(f"{name}: the download at {path} is not usable:\n" + "\n".join(f"  - {p}" for p in problems)
                        + f"\nRun `v4 rm {name}` and `v4 pull {name}` again.")
    return path


def _explain(e: Exception, repo: str, revision: str | None, name: str | None = None) -> HubError:
    """A hub or network exception as one clear sentence with the fix."""
    if e.__cause__ is not None and type(e).__name__ == "DryRunError":  # a dry run wraps the real cause
        e = e.__cause__  # type: ignore[assignment]
    if isinstance(e, GatedRepoError):
        return PullError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, RepositoryNotFoundError):
        return ModelNotFound(f"no model {repo} on {endpoint()} (or it is private: set HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFound(f"{repo} has no revision {revision!r} on {endpoint()}")
    if name is not None:  # the transfer itself failed: finished files stay in the cache
        return PullError(f"the download of {repo} stopped: {type(e).__name__}: {_first_line(e)}. "
                         f"Run `v4 pull {name}` again to continue; files already downloaded are kept.")
    if isinstance(e, HfHubHTTPError):
        return PullError(f"{endpoint()} refused the request for {repo}: {_first_line(e)}")
    return PullError(f"cannot reach {endpoint()} for {repo}: {type(e).__name__}: {_first_line(e)}")


def _first_line(e: Exception) -> str:
    text = str(e).strip() or repr(e)
    return text.splitlines()[0]


# ---- verifying ----------------------------------------------------------------------------------------
def verify(path: str | Path, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]:
    """Every problem of a checkpoint folder: config, index, shards, sizes (and content hashes if asked)."""
    from .runtime.args import ModelArgs  # v4cli.runtime pulls in torch: only when a folder is checked
    from .runtime.weights import Checkpoint, CheckpointError

    path, problems = Path(path), []
    try:
        ModelArgs.from_file(path / "config.json")
    except (ValueError, OSError) as e:
        problems.append(f"config.json: {e}")
    for fname, want in sorted((sizes or {}).items()):
        f = path / fname
        if not f.exists():
            problems.append(f"{fname} is missing")
        elif (got := f.stat().st_size) != want:
            problems.append(f"{fname} has {got:,} bytes but the Hub lists {want:,}")
    try:
        Checkpoint(path)
    except CheckpointError as e:
        lines = [ln.strip()[2:] for ln in str(e).splitlines()[1:] if ln.strip().startswith("- ")]
        problems.extend(_condense(p) for p in (lines or [str(e)]))
    if checksums:
        problems.extend(_hash_problems(path))
    return problems


def _condense(problem: str) -> str:
    """A shard's tensor-by-tensor list (one entry per tensor past a truncation) cut to its first entries."""
    parts = problem.split("; ")
    return problem if len(parts) <= 2 else "; ".join(parts[:2]) + f"; ... and {len(parts) - 2} more"


def _hash_problems(path: Path) -> list[str]:
    """The HF cache names each blob by its ETag: the sha256 of an LFS file, the git blob sha1 of a small one."""
    out = []
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        blob = f.resolve().name
        if len(blob) == 64:
            h = hashlib.sha256()
        elif len(blob) == 40:
            h = hashlib.sha1()
            h.update(f"blob {f.stat().st_size}\0".encode())
        else:
            continue  # not a cache blob (a local folder): nothing to compare with
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        if h.hexdigest() != blob:
            out.append(f"{f.relative_to(path)}: checksum {h.hexdigest()[:12]}… does not match {blob[:12]}…")
    return out


# ---- listing, showing, removing -----------------------------------------------------------------------
def _is_v4(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") == "deepseek_v4" or "DeepseekV4ForCausalLM" in (cfg.get("architectures") or [])


def _name_of(repo_id: str) -> str:
    return next((a for a, r in ALIASES.items() if r == repo_id), repo_id)


def list_models() -> list[ModelInfo]:
    """The built-in (once written), folders in models_dir() and the V4 repos in the HF cache."""
    out: list[ModelInfo] = []
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if d.name == BUILTIN and (d / "model.safetensors.index.json").exists():
                out.append(ModelInfo(BUILTIN, d, _folder_size(d), "builtin"))
            elif d.name != BUILTIN and _is_model_dir(d):
                out.append(ModelInfo(d.name, d, _folder_size(d), "local"))
    try:
        info = scan_cache_dir(cache_dir())
    except CacheNotFound:
        return out
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if _is_v4(rev.snapshot_path):
                out.append(ModelInfo(_name_of(repo.repo_id), rev.snapshot_path, rev.size_on_disk, "hub",
                                     rev.commit_hash))
    return out


def remove(name: str) -> int:
    """Delete a pulled model (all its cached revisions) or the built-in; returns the bytes freed."""
    if name == BUILTIN:
        folder = models_dir() / BUILTIN
        if not folder.exists():
            raise ModelNotFound("the built-in tiny model is not written yet: nothing to remove")
        size = _folder_size(folder)
        shutil.rmtree(folder)
        return size
    local = _local(name)
    if local is not None and local.parent != models_dir().resolve():
        raise HubError(f"{name} is a folder you gave by path: v4 does not delete it, remove it yourself")
    if "/" not in name and _is_model_dir(models_dir() / name):
        size = _folder_size(models_dir() / name)
        shutil.rmtree(models_dir() / name)
        return size
    repo = repo_id_of(name)
    try:
        cached = [r for r in scan_cache_dir(cache_dir()).repos if r.repo_id == repo and r.repo_type == "model"]
    except CacheNotFound:
        cached = []
    if repo is None or not cached:
        raise ModelNotFound(f"{name} is not pulled: nothing to remove.{_available()}")
    repo_dir, size = cached[0].repo_path, cached[0].size_on_disk
    shutil.rmtree(repo_dir)  # the whole repo: every revision, refs and blobs (and leftover partial files)
    return size


def show(name: str, context: int | None = None, revision: str | None = None) -> dict[str, Any]:
    """A summary of a model's config and its size on disk; with `context`, the memory plan at that context."""
    from .runtime.args import ModelArgs

    m = resolve(name, revision)
    assert m.path is not None
    args = ModelArgs.from_file(m.path / "config.json")
    arch = (json.loads((m.path / "config.json").read_text()).get("architectures") or ["?"])[0]
    kinds = {0: "sliding window", 4: "CSA (ratio 4)"}
    layer_types: dict[str, int] = {}
    for r in args.compress_ratios[: args.n_layers]:
        key = kinds.get(r, f"HCA (ratio {r})")
        layer_types[key] = layer_types.get(key, 0) + 1
    quant = "none (bf16)"
    if args.fp8_weights:
        quant = "FP8 e4m3 weights" + (", FP4 experts" if args.fp4_experts else "")
    index = m.path / "model.safetensors.index.json"
    weights = json.loads(index.read_text()).get("metadata", {}).get("total_size") if index.exists() else None
    out: dict[str, Any] = {
        "name": name, "kind": m.kind, "path": str(m.path), "repo_id": m.repo_id, "revision": m.revision,
        "architecture": arch, "hidden_size": args.hidden_size, "layers": args.n_layers,
        "mtp_layers": args.n_mtp, "layer_types": layer_types, "attention_heads": args.num_attention_heads,
        "head_dim": args.head_dim, "routed_experts": args.n_routed_experts,
        "active_experts": args.num_experts_per_tok, "shared_experts": args.n_shared_experts,
        "hash_layers": args.num_hash_layers, "vocab_size": args.vocab_size,
        "context_length": args.max_position_embeddings, "sliding_window": args.sliding_window,
        "quantization": quant, "weights_bytes": weights, "disk_bytes": _folder_size(m.path),
    }
    from .runtime.description import describe  # headers only: layout, storage, problems, memory plan

    out.update(describe(m.path, context))
    return out
