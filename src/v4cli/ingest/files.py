"""Step one of `v4 ask` ingestion: walk files, folders and repositories and decide file by file.

Every skip has a reason; the decisions (order, ignores, binary and secret detection, symlinks, decoding)
are listed in `v4cli.ingest`. Pure: it reads files and loads no model.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathspec import GitIgnoreSpec

DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024  # gitingest's cap; 1M tokens is ~4 MB of text anyway
SNIFF_BYTES = 8192
IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".cache", ".idea", ".next", ".gradle", "dist", "build",
    "htmlcov", "bower_components",
})
IGNORED_FILES = frozenset({
    ".DS_Store", "Thumbs.db", "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "uv.lock",
    "Cargo.lock", "Gemfile.lock", "composer.lock", "Pipfile.lock", "go.sum",
})
IGNORED_SUFFIXES = (".min.js", ".min.css", ".map", ".pyc", ".pyo", ".egg-info")
BINARY_EXTS = frozenset({
    "png", "jpg", "jpeg", "gif", "bmp", "ico", "webp", "tif", "tiff", "psd", "heic", "zip", "tar", "gz", "tgz",
    "bz2", "xz", "7z", "rar", "zst", "lz4", "mp3", "mp4", "wav", "ogg", "flac", "mov", "avi", "mkv", "webm", "pdf",
    "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ttf", "otf", "woff", "woff2", "eot", "so", "dylib", "dll",
    "exe", "o", "a", "lib", "class", "jar", "war", "whl", "bin", "npy", "npz", "pt", "pth", "safetensors", "gguf",
    "onnx", "ckpt", "parquet", "feather", "arrow", "sqlite", "sqlite3", "db", "iso", "dmg",
})
SECRET_NAMES = frozenset({
    ".env", ".envrc", ".netrc", ".pgpass", ".pypirc", ".npmrc", ".htpasswd", "credentials", "credentials.json",
    ".git-credentials", "secrets.json", "secrets.yaml", "secrets.yml",
})
SECRET_EXTS = frozenset({"pem", "key", "p12", "pfx", "jks", "keystore", "kdbx", "asc", "gpg"})
SECRET_SAFE = (".example", ".sample", ".template", ".dist", ".pub")  # .env.example, id_rsa.pub: no secrets
SECRET_CONTENT = [  # written so that this file does not match itself
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY( BLOCK)?-----")),
    ("AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("API key", re.compile(r"\bsk-(ant|proj)-[A-Za-z0-9_-]{20,}")),
]
_ASCII_TEXT_BYTES = b"\t\n\x0c\r\x08\x1b" + bytes(range(32, 127))
_TEXT_BYTES = _ASCII_TEXT_BYTES + bytes(range(128, 256))


@dataclass
class SourceFile:
    """A file `collect` decided to read: display path (posix), decoded text, size on disk, notes, the
    display path of the folder argument it was found under ("" for a file argument or ``.``), and its
    real path (resolved: the same file reached two ways has the same one)."""

    path: str
    text: str
    bytes: int
    notes: list[str] = field(default_factory=list)
    root: str = ""
    real: str = ""


@dataclass
class Skipped:
    path: str
    reason: str


# ---------------------------------------------------------------------------------------------- collect


def _label(arg: Path) -> str:
    """Display prefix of an argument: as given when relative (``.`` -> none), the name when absolute."""
    if arg.is_absolute():
        return arg.name
    text = Path(os.path.normpath(arg)).as_posix()
    return "" if text == "." else text


def _join(label: str, rel: str) -> str:
    return f"{label}/{rel}" if label and rel else label or rel


def _name_reason(name: str) -> str | None:
    """Why a file is skipped by its name alone (secrets first: they matter most)."""
    lower = name.lower()
    ext = lower.rsplit(".", 1)[-1] if "." in lower.lstrip(".") else ""
    if not lower.endswith(SECRET_SAFE) and (
        lower in SECRET_NAMES or lower.startswith((".env.", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"))
        or ext in SECRET_EXTS
    ):
        return f"looks like a secret ({name})"
    if name in IGNORED_FILES or lower.endswith(IGNORED_SUFFIXES):
        return f"default ignore ({name})"
    if ext in BINARY_EXTS:
        return f"binary (.{ext})"
    return None


def _decode(data: bytes) -> tuple[str | None, list[str]]:
    """Text and notes, or (None, []) for binary content: NULs, or many control bytes in the first 8 KiB."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 has NULs; its BOM tells it apart from binary
        try:
            return data.decode("utf-16"), ["UTF-16, decoded"]
        except UnicodeDecodeError:
            return None, []
    sample = data[:SNIFF_BYTES]
    if b"\0" in sample:
        return None, []
    notes: list[str] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Windows text is mostly cp1252 (curly quotes in 0x80-0x9f); latin-1 never fails and loses nothing
        encoding = "cp1252"
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            text, encoding = data.decode("latin-1"), "latin-1"
        notes.append(f"not UTF-8, decoded as {encoding}")
    # control bytes other than \t \n \f \r \b \x1b are rare in text; without UTF-8, high bytes count too
    odd = len(sample.translate(None, _TEXT_BYTES if not notes else _ASCII_TEXT_BYTES))
    return (None, []) if sample and odd / len(sample) > 0.3 else (text, notes)


def _read(path: Path, shown: str, max_bytes: int, explicit: bool, skipped: list[Skipped]) -> SourceFile | None:
    reason = _name_reason(path.name)
    if reason and not (explicit and reason.startswith("default ignore")):
        skipped.append(Skipped(shown, reason))
        return None
    try:
        info = path.stat()
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            skipped.append(Skipped(shown, "not a regular file"))
            return None
        if size > max_bytes:
            skipped.append(Skipped(shown, f"too large ({size} bytes > {max_bytes})"))
            return None
        data = path.read_bytes()
    except OSError as exc:
        skipped.append(Skipped(shown, f"unreadable: {exc.strerror or exc}"))
        return None
    text, notes = _decode(data)
    if text is None:
        skipped.append(Skipped(shown, "binary"))
        return None
    for what, pattern in SECRET_CONTENT:
        if pattern.search(text):
            skipped.append(Skipped(shown, f"looks like a secret ({what})"))
            return None
    return SourceFile(shown, text, size, notes)


def _ancestor_ignores(root: Path) -> list[tuple[str, GitIgnoreSpec]]:
    """.gitignore files between the enclosing repository's top and the root's parent (``--file repo/src``)."""
    found = []
    if (root / ".git").exists():
        return []
    for parent in root.parents:
        rel = f"{root.relative_to(parent).as_posix()}/"
        gi = parent / ".gitignore"
        if gi.is_file():
            found.append((rel, GitIgnoreSpec.from_lines(gi.read_text("utf-8", "replace").splitlines())))
        if (parent / ".git").exists():
            return found[::-1]
    return []  # not in a repository: outer .gitignore files are not ours


def _ignored(rel: str, is_dir: bool, specs: Sequence[tuple[str, GitIgnoreSpec]]) -> bool:
    """Git semantics: the deepest .gitignore with a matching pattern decides; ``!`` re-includes."""
    verdict = None
    for base, spec in specs:
        if base.startswith("/"):  # nested .gitignore: patterns relative to its folder
            if not rel.startswith(base[1:]):
                continue
            sub = rel[len(base) - 1:]
        else:  # above the root: prefix the root's path inside the repository
            sub = base + rel
        result = spec.check_file(sub + "/" if is_dir else sub).include
        if result is not None:
            verdict = result
    return bool(verdict)


Found = tuple[str, str, bool, SourceFile]  # (path in its root, real path, reached through a link, file)


def _walk(root: Path, label: str, opts: dict[str, Any], out: list[Found], skipped: list[Skipped]) -> None:
    real_root = root.resolve()
    specs = _ancestor_ignores(real_root) if opts["follow_gitignore"] else []
    extra = GitIgnoreSpec.from_lines(opts["extra_ignores"]) if opts["extra_ignores"] else None

    def visit(folder: Path, real: Path, rel: str, specs: list[tuple[str, GitIgnoreSpec]]) -> None:
        gi = folder / ".gitignore"
        if opts["follow_gitignore"] and gi.is_file():
            lines = gi.read_text("utf-8", "replace").splitlines()
            specs = [*specs, (f"/{rel}", GitIgnoreSpec.from_lines(lines))]
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(_join(label, rel) or ".", f"unreadable: {exc.strerror or exc}"))
            return
        for entry in entries:
            child, shown = f"{rel}{entry.name}", _join(label, f"{rel}{entry.name}")
            path, target, link = Path(entry.path), real / entry.name, entry.is_symlink()
            if link:
                try:
                    target = path.resolve(strict=True)
                except (RuntimeError, OSError) as exc:  # a -> b -> a: RuntimeError before 3.13, ELOOP after
                    loop = isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP
                    skipped.append(Skipped(shown, "symlink loop" if loop else "broken symlink"))
                    continue
                if not target.is_relative_to(real_root):
                    skipped.append(Skipped(shown, "symlink outside the root"))
                    continue
            is_dir = target.is_dir()
            shown += "/" * is_dir
            if entry.name == ".git" or (is_dir and entry.name in IGNORED_DIRS):
                skipped.append(Skipped(shown, f"default ignore ({entry.name})"))
            elif _ignored(child, is_dir, specs):
                skipped.append(Skipped(shown, "ignored by .gitignore"))
            elif extra is not None and extra.match_file(child + "/" * is_dir):
                skipped.append(Skipped(shown, "ignored by --exclude"))
            elif is_dir and link:
                # only real folders are walked: the tree has no cycles and no folder is read twice
                inside = target.relative_to(real_root).as_posix()
                loop = real.is_relative_to(target)
                skipped.append(Skipped(shown, "symlink loop" if loop else f"symlink to {inside}/ (read there)"))
            elif is_dir:
                visit(path, target, f"{child}/", specs)
            else:
                source = _read(path, shown, opts["max_file_bytes"], False, skipped)
                if source is not None:
                    out.append((child, str(target), link, source))

    visit(root, real_root, "", specs)


def _order_key(rel: str) -> tuple[tuple[int, str], ...]:
    """A folder's files (0) before its subfolders (1), each sorted by name."""
    *dirs, name = rel.split("/")
    return (*((1, d) for d in dirs), (0, name))


def collect(
    paths: Iterable[Path | str],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    extra_ignores: Sequence[str] = (),
    follow_gitignore: bool = True,
) -> tuple[list[SourceFile], list[Skipped]]:
    """Read the files under ``paths`` in prompt order; every file left out is in the skipped list.

    ``extra_ignores`` are gitignore-style patterns relative to each folder argument. A file reached
    twice (two arguments, or a symlink to a file also reached directly) is kept once, at its real path.
    """
    opts = {"max_file_bytes": max_file_bytes, "extra_ignores": list(extra_ignores),
            "follow_gitignore": follow_gitignore}
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # real path -> display path of the copy kept
    for arg in map(Path, paths):
        if not arg.exists() and not arg.is_symlink():
            raise FileNotFoundError(f"no such file or folder: {arg}")
        label = _label(arg)
        found: list[Found] = []
        if arg.is_dir():
            _walk(arg, label, opts, found, skipped)
            for *_, source in found:
                source.root = label
            found.sort(key=lambda f: _order_key(f[0]))
        else:
            source = _read(arg, label or arg.name, max_file_bytes, True, skipped)
            if source is not None:
                found.append(("", str(arg.resolve()), False, source))
        direct = {real: s.path for _, real, linked, s in found if not linked}
        for _rel, real, linked, source in found:
            if linked and real in direct:  # keep the real path, whatever the sort order says
                skipped.append(Skipped(source.path, f"symlink to {direct[real]} (already included)"))
            elif real in seen:
                skipped.append(Skipped(source.path, f"duplicate of {seen[real]}"))
            else:
                seen[real] = source.path
                source.real = real
                files.append(source)
    return files, skipped
