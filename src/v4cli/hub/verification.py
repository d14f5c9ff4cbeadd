"""Is a checkpoint folder usable: its config, index and shards, the sizes the Hub lists, and (if asked) the
content hashes the HF cache names its blobs by."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import PullError


def verify(path: str | Path, sizes: dict[str, int] | None = None, checksums: bool = False) -> list[str]:
    """Every problem of a checkpoint folder: config, index, shards, sizes (and content hashes if asked)."""
    from ..runtime.args import ModelArgs  # v4cli.runtime pulls in torch: only when a folder is checked
    from ..runtime.weights import Checkpoint, CheckpointError

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


def checked(path: Path, name: str, sizes: dict[str, int], checksums: bool) -> Path:
    """`path` if it verifies, else a PullError listing the problems and the fix."""
    problems = verify(path, sizes, checksums)
    if problems:
        raise PullError(f"{name}: the download at {path} is not usable:\n" + "\n".join(f"  - {p}" for p in problems)
                        + f"\nRun `v4 rm {name}` and `v4 pull {name}` again.")
    return path


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
