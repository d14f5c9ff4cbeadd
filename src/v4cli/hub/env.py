"""The environment of the hub: HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE, read per call
(not at import) so tests and users can change them; and the disk the cache lives on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from huggingface_hub import constants


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


def hub_token(given: str | None) -> str | None:
    return given or os.environ.get("HF_TOKEN") or None  # None: huggingface_hub falls back to `hf auth login`


def folder_size(path: Path) -> int:
    seen, total = set(), 0
    for p in path.rglob("*"):
        if p.is_file():
            real = p.resolve()  # HF snapshots are symlinks into blobs/: count each blob once
            if real not in seen:
                seen.add(real)
                total += real.stat().st_size
    return total


def free_bytes(folder: Path) -> int:
    p = folder
    while not p.exists() and p != p.parent:  # the cache folder may not exist before the first pull
        p = p.parent
    return shutil.disk_usage(p).free
