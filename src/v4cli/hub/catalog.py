"""The models on this machine: find one by name, list them all, remove one.

Hub repos live in the standard HF cache (HF_HOME / HF_HUB_CACHE), so other tools share the download; the
built-in `tiny` model and folders the user placed there live in models_dir().
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import scan_cache_dir, snapshot_download
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException, LocalEntryNotFoundError

from ..settings import models_dir
from .env import cache_dir, folder_size
from .errors import HubError, ModelNotFound
from .names import BUILTIN, VALID, alias_of, is_model_dir, local_folder, looks_like_path, repo_id_of


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


def unknown(name: str) -> ModelNotFound:
    """The error for a name that is neither pulled nor pullable, saying what a valid name is."""
    if looks_like_path(name):
        what = "no such folder" if not Path(name).expanduser().exists() else "not a folder"
        return ModelNotFound(f"unknown model {name!r}: {what}. Use {VALID}.{available()}")
    return ModelNotFound(f"unknown model {name!r}: use {VALID}.{available()}")


def resolve(name: str, revision: str | None = None, materialize: bool = True) -> ResolvedModel:
    """Find the folder of a model: a local folder path, `tiny`, an alias or a pulled repo id."""
    if (local := local_folder(name)) is not None:
        return ResolvedModel(name, "local", local)
    if name == BUILTIN:
        folder = models_dir() / BUILTIN
        if materialize:
            from ..runtime.tiny import ensure_builtin  # torch-heavy: only when the built-in is wanted

            ensure_builtin(folder)
        return ResolvedModel(name, "builtin", folder)
    if "/" not in name and is_model_dir(models_dir() / name):  # a folder the user placed in models_dir()
        return ResolvedModel(name, "local", models_dir() / name)
    repo = repo_id_of(name)
    if repo is None:
        raise unknown(name)
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):
        raise ModelNotFound(f"{name} ({repo}) is not pulled yet: run `v4 pull {name}`.{available()}") from None
    return ResolvedModel(name, "hub", Path(path), repo, Path(path).name)


def available() -> str:
    """A sentence naming the models one can use instead (for error messages)."""
    try:
        names = [m.name for m in list_models()]
    except Exception:  # listing is a courtesy in an error message; never mask the real error
        names = []
    return f" Available: {', '.join(names)}." if names else " Nothing is pulled yet (`tiny` is always available)."


def _is_v4(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") == "deepseek_v4" or "DeepseekV4ForCausalLM" in (cfg.get("architectures") or [])


def _scan() -> list:
    """The model repos of the HF cache (none if it does not exist yet)."""
    try:
        return [r for r in scan_cache_dir(cache_dir()).repos if r.repo_type == "model"]
    except CacheNotFound:
        return []
    except (CorruptedCacheException, ValueError) as e:  # ValueError: HF_HUB_CACHE names a file
        raise HubError(f"the Hugging Face cache at {cache_dir()} cannot be read: {e}. Check HF_HUB_CACHE and "
                       "HF_HOME") from None


def list_models() -> list[ModelInfo]:
    """The built-in (once written), folders in models_dir() and the V4 repos in the HF cache."""
    out: list[ModelInfo] = []
    if models_dir().is_dir():
        for d in sorted(models_dir().iterdir()):
            if d.name == BUILTIN and (d / "model.safetensors.index.json").exists():
                out.append(ModelInfo(BUILTIN, d, folder_size(d), "builtin"))
            elif d.name != BUILTIN and is_model_dir(d):
                out.append(ModelInfo(d.name, d, folder_size(d), "local"))
    for repo in sorted(_scan(), key=lambda r: r.repo_id):
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if _is_v4(rev.snapshot_path):
                out.append(ModelInfo(alias_of(repo.repo_id), rev.snapshot_path, rev.size_on_disk, "hub",
                                     rev.commit_hash))
    return out


def _delete(folder: Path, name: str) -> None:
    try:
        shutil.rmtree(folder)
    except OSError as e:
        raise HubError(f"cannot remove {name}: {e.strerror or e} ({e.filename or folder})") from None


def remove(name: str) -> int:
    """Delete a pulled model (all its cached revisions) or the built-in; returns the bytes freed."""
    if name == BUILTIN:
        folder = models_dir() / BUILTIN
        if not folder.exists():
            raise ModelNotFound("the built-in tiny model is not written yet: nothing to remove")
        size = folder_size(folder)
        _delete(folder, name)
        return size
    local = local_folder(name)
    if local is not None and local.parent != models_dir().resolve():
        raise HubError(f"{name} is a folder you gave by path: v4 does not delete it, remove it yourself")
    if "/" not in name and is_model_dir(models_dir() / name):
        size = folder_size(models_dir() / name)
        _delete(models_dir() / name, name)
        return size
    repo = repo_id_of(name)
    cached = [r for r in _scan() if r.repo_id == repo]
    if repo is None or not cached:
        raise ModelNotFound(f"{name} is not pulled: nothing to remove.{available()}")
    # the whole repo: every revision, refs and blobs (and the partial files a stopped pull left)
    _delete(cached[0].repo_path, name)
    return cached[0].size_on_disk
