"""A checkpoint folder on disk: its shards and index read and checked, and the report of what is wrong.

Nothing here knows tensor names or the model: `Checkpoint` gives the tensors by name across shards, and
`CheckpointError` carries every problem found (per file where there is one) with the remedy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .safetensors_mmap import Shard, ShardError

_SHOWN = 200  # problems printed in a message; all of them stay in `CheckpointError.problems`


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a checkpoint. `file`: the shard (or index) it is about, None for the folder;
    `kind`: "file" (missing, cut-off or corrupt files), "tensor" (names, shapes, dtypes) or "config"."""

    text: str
    file: str | None = None
    kind: str = "tensor"

    def __str__(self) -> str:
        return f"{self.file}: {self.text}" if self.file else self.text


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded. `problems` lists every problem found; the message prints one line
    per problem, grouped per file, then the remedy."""

    def __init__(self, summary: str, problems: list[Problem] | None = None, remedy: str | None = None) -> None:
        self.summary, self.remedy = summary, remedy
        # a folder that cannot be read at all is its own one problem, and the summary says it all
        self.problems = list(problems) if problems else [Problem(summary, kind="file")]
        super().__init__(self._text(listed=bool(problems)))

    def _text(self, listed: bool) -> str:
        if not listed:
            return self.summary + (f"\n{self.remedy}" if self.remedy else "")
        n = len(self.problems)
        lines = [f"{self.summary}: {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  - {p}" for p in grouped(self.problems)[:_SHOWN]]
        if n > _SHOWN:
            lines.append(f"  ... and {n - _SHOWN} more")
        if self.remedy:
            lines.append(self.remedy)
        return "\n".join(lines)


def grouped(problems: list[Problem]) -> list[Problem]:
    """Problems of each file together (files in name order), then those of the folder as a whole."""
    return sorted(problems, key=lambda p: (p.file is None, p.file or ""))


def remedy(path: Path, problems: list[Problem]) -> str:
    """What the user should do, in their terms: re-pull a pulled model, rebuild the built-in, or fix a folder."""
    kinds = {p.kind for p in problems}
    repo = pulled_repo(path)
    if repo is not None and kinds & {"file", "tensor"}:
        return (f"Re-run `v4 pull {repo}`: it resumes and fetches what is missing or cut off "
                f"(if the same problems come back, `v4 rm {repo}` and pull it again).")
    if (path / "v4-builtin.json").exists():
        return "Run `v4 rm tiny`: the built-in model is written again on its next use."
    out = []
    if "file" in kinds:
        out.append("The folder is incomplete or damaged: copy the files named above into it again, from where "
                   "the checkpoint came from.")
    if "tensor" in kinds:
        out.append("Its tensors do not fit its config.json in any layout v4 loads (the official release, "
                   "transformers' names, or what transformers' save_pretrained writes; FP8/FP4 or float): check "
                   "that config.json belongs to these weights, or export them again.")
    if "config" in kinds:
        out.append("Fix config.json (it must be the DeepSeek-V4 config of these weights).")
    return " ".join(out)


def pulled_repo(path: Path) -> str | None:
    """The Hub repo id of a snapshot folder in the HF cache (`models--owner--name/snapshots/<commit>`)."""
    path = path.resolve() if path.exists() else path
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    return None


class Checkpoint:
    """The tensors of a checkpoint folder by name, across shards, with the index checked.

    `strict` (the default) raises CheckpointError on any problem; otherwise they are kept in `problems` and
    every readable shard is still listed, so a damaged folder can be described."""

    def __init__(self, path: str | Path, strict: bool = True) -> None:
        self.path = Path(path)
        self.problems: list[Problem] = []
        self.shards: dict[str, Shard] = {}
        self.where: dict[str, str] = {}
        self.unreadable: set[str] = set()  # shards missing or with an unreadable header
        self.lost: dict[str, str] = {}  # names the index places in an unreadable shard -> that shard
        index = self.path / "model.safetensors.index.json"
        weight_map: dict[str, str] | None = None
        if index.exists():
            try:
                weight_map = dict(json.loads(index.read_text())["weight_map"])
                files = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise CheckpointError(f"{index}: not a valid safetensors index (no weight_map)",
                                      remedy=remedy(self.path, [Problem("", index.name, "file")])) from None
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files and no model.safetensors.index.json")
        for fname in files:
            fpath = self.path / fname
            if not fpath.exists():
                self.problems.append(Problem("missing (the index lists it)", fname, "file"))
                self.unreadable.add(fname)
                continue
            try:
                shard = Shard(fpath)
            except ShardError as e:
                self.problems.append(Problem(str(e).removeprefix(f"{fname}: "), fname, "file"))
                self.unreadable.add(fname)
                continue
            self.shards[fname] = shard
            self.problems += [Problem(p, fname, "file") for p in shard.problems]
            for name in shard.names():
                self.where[name] = fname
        self.indexed = weight_map is not None
        if weight_map is not None:
            self.lost = {n: f for n, f in weight_map.items() if f in self.unreadable}
            for name, fname in weight_map.items():
                if fname in self.shards and name not in self.shards[fname].entries:
                    self.problems.append(Problem(f"the index places {name} here, but the file does not hold it",
                                                 fname, "file"))
        if strict:
            self.check()

    def check(self) -> None:
        if self.problems:
            raise CheckpointError(f"cannot load the checkpoint at {self.path}", self.problems,
                                  remedy(self.path, self.problems))

    def names(self) -> list[str]:
        return list(self.where)

    def dtype_name(self, name: str) -> str:
        return self.shards[self.where[name]].dtype_name(name)

    def shape(self, name: str) -> list[int]:
        return self.shards[self.where[name]].shape(name)

    def nbytes(self, name: str) -> int:
        lo, hi = self.shards[self.where[name]].entries[name][2:]
        return hi - lo

    def tensor(self, name: str) -> torch.Tensor:
        return self.shards[self.where[name]].tensor(name)
