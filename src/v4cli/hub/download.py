"""`pull`: download (or complete) a model into the HF cache, then check it.

The plan comes first (a dry run of `snapshot_download`: every file, its size, which are already here), then
the disk check, then the transfer (transfer.py: resumable across pulls), then `snapshot_download` links the
snapshot, and verification.py checks what arrived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects

from . import transfer
from .catalog import resolve, unknown
from .env import cache_dir, endpoint, free_bytes, hub_token, offline
from .errors import HubError, ModelNotFound, NotEnoughDisk, PullError
from .names import BUILTIN, local_folder, repo_id_of
from .transfer import Progress
from .verification import checked

# What a V4 checkpoint needs (weights, index, config, tokenizer) plus the small docs; skips figures and code.
DEFAULT_INCLUDE = ["*.json", "*.safetensors", "*.md", "LICENSE*"]
# Always fetched with user --include patterns: without them nothing pulled can run (all small).
ESSENTIAL = ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json"]


def pull(name: str, revision: str | None = None, include: list[str] | None = None, token: str | None = None,
         progress: Progress | None = None, checksums: bool = False) -> Path:
    """Download (or complete) a model into the HF cache, check it, and return its snapshot folder."""
    if name == BUILTIN:
        return resolve(name).path  # type: ignore[return-value]
    if local_folder(name) is not None:
        raise PullError(f"{name} is a local folder: nothing to pull, use it as --model {name}")
    repo = repo_id_of(name)
    if repo is None:
        raise unknown(name)
    patterns = DEFAULT_INCLUDE if not include else sorted(set(include) | set(ESSENTIAL))
    where, tok = cache_dir(), hub_token(token)
    common: dict[str, Any] = dict(revision=revision, cache_dir=where, allow_patterns=patterns, token=tok)
    if offline():
        try:
            path = Path(snapshot_download(repo, local_files_only=True, **common))
        except LocalEntryNotFoundError:
            raise PullError(f"offline mode is on (HF_HUB_OFFLINE) and {repo} is not in the cache at {where}: "
                            "unset HF_HUB_OFFLINE to download it") from None
        return checked(path, name, _cached_sizes(repo, path.name, patterns), checksums)
    try:  # the plan first: sizes of every file and which ones are already here
        plan = snapshot_download(repo, endpoint=endpoint(), dry_run=True, tqdm_class=transfer.silent_bar(), **common)
        if not plan:
            raise PullError(f"no file of {repo} matches {', '.join(patterns)}")
        todo = transfer.blobs(repo, [(f.filename, f.commit_hash) for f in plan if f.will_download], tok)
    except HubError:
        raise
    except Exception as e:
        raise _explain(e, repo, revision) from None
    sizes = {f.filename: f.file_size for f in plan if f.file_size is not None}
    missing, free = sum(b.size - b.have for b in todo), free_bytes(where)
    if missing > free:
        raise NotEnoughDisk(missing, free, where)
    try:
        transfer.fetch(todo, tok, progress)
        path = Path(snapshot_download(repo, endpoint=endpoint(), tqdm_class=transfer.silent_bar(), **common))
    except Exception as e:
        raise _explain(e, repo, revision, name) from None
    return checked(path, name, sizes, checksums)


def _cached_sizes(repo: str, commit: str, patterns: list[str]) -> dict[str, int]:
    """File sizes from the tree listing huggingface_hub cached at download time (none: nothing to compare)."""
    try:
        tree = {f.path: f.size for f in get_cached_repo_tree(repo, revision=commit, cache_dir=cache_dir())}
    except CachedRepoTreeNotFoundError:
        return {}
    return {p: tree[p] for p in filter_repo_objects(tree, allow_patterns=patterns)}


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
    if name is not None:  # the transfer itself failed: finished files stay, the unfinished one continues
        return PullError(f"the download of {repo} stopped: {type(e).__name__}: {_first_line(e)}. "
                         f"Run `v4 pull {name}` again to continue where it stopped.")
    if isinstance(e, HfHubHTTPError):
        return PullError(f"{endpoint()} refused the request for {repo}: {_first_line(e)}")
    return PullError(f"cannot reach {endpoint()} for {repo}: {type(e).__name__}: {_first_line(e)}")


def _first_line(e: Exception) -> str:
    text = str(e).strip() or repr(e)
    return text.splitlines()[0]
