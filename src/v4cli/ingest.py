"""Files, folders and repositories -> one prompt for ``v4 ask``, with exact V4 token counts.

Two steps, both pure (no model): `collect` walks the paths and decides file by file (every skip has a
reason), `build_prompt` lays the prompt out, counts it with the V4 tokenizer and fits it to a budget.

Decisions (the why is in the comments next to the code):

- Order: arguments in the order given; inside a folder, sorted by path components (codepoint order),
  a folder's files before its subfolders, so one folder's files stay together. No mtime or git order:
  the same tree gives the same bytes, hence the same cached prefix.
- Layout of the user message: ``<files>`` listing (one path a line), ``<file path="...">`` blocks,
  an optional ``<stdin>`` block, then the question last. Everything before the question is a reusable
  prefix (`Ingested.prefix_ids`). Each block starts with ``<`` and ends with ``\\n``; the V4
  pre-tokenizer never joins a newline with a following non-space character, so blocks tokenize
  independently and per-block counts add up exactly to ``len(prompt_ids)`` (checked on every build).
- Over budget: whole files are dropped, largest first (ties: later in order first), until the prompt
  fits; they are listed in an ``<omitted>`` section of the prompt and as `Dropped`. Never a truncation.
- Non-UTF-8 text (no NULs, few control bytes) is kept with a note, decoded as cp1252 (Windows text),
  else latin-1 (never fails); UTF-16 with a BOM is decoded as such. Binary files are skipped by name
  and by content (NULs, or >30% odd bytes in the first 8 KiB).
- Symlinks: never out of the root. A file link whose target is also reached directly is skipped (the
  real path is kept); folder links are never walked (their target is walked at its real path, or is a
  loop), so the walk is a tree and no file is read twice.
- Text that the tokenizer would turn into special tokens (``<think>``, ``<｜User｜>``...) is defused
  with a zero-width space after its first character, with a note: file contents cannot forge turns.
- Explicitly named files bypass ignore rules (.gitignore, defaults) but not the binary, size and
  secret checks. Missing argument paths raise FileNotFoundError. An empty result is not an error:
  the summary carries a warning and the CLI decides.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathspec import GitIgnoreSpec

from v4cli.chat_format import encode_messages, encode_prompt_ids

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "BudgetError", "Dropped", "FileEntry", "Ingested", "Skipped", "SourceFile",
    "build_prompt", "collect", "format_summary",
]

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
ZWSP = "\u200b"
_ASCII_TEXT_BYTES = b"\t\n\x0c\r\x08\x1b" + bytes(range(32, 127))
_TEXT_BYTES = _ASCII_TEXT_BYTES + bytes(range(128, 256))


class BudgetError(ValueError):
    """The question and the fixed parts alone do not fit the token budget."""


@dataclass
class SourceFile:
    """A file `collect` decided to read: display path (posix), decoded text, size on disk, notes, and the
    display path of the folder argument it was found under ("" for a file argument or ``.``)."""

    path: str
    text: str
    bytes: int
    notes: list[str] = field(default_factory=list)
    root: str = ""


@dataclass
class FileEntry:
    """A file in the prompt; ``tokens`` are the tokens of its whole ``<file>`` block; ``folder`` is its
    top-level folder under the argument it came from (``.`` for files at the top)."""

    path: str
    tokens: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    folder: str = "."


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Dropped:
    path: str
    tokens: int
    reason: str = "over budget"


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
                files.append(source)
    return files, skipped


# ------------------------------------------------------------------------------------------ build_prompt

@functools.lru_cache(maxsize=4)
def _defuser(texts: frozenset[str]) -> re.Pattern[str]:
    """A regex of every added-token text, grouped by first character so most positions fail at once."""
    by_first: dict[str, list[str]] = {}
    for text in sorted(texts, key=len, reverse=True):
        by_first.setdefault(text[0], []).append(re.escape(text[1:]))
    return re.compile("|".join(f"{re.escape(c)}(?:{'|'.join(rest)})" for c, rest in by_first.items()) or "(?!)")


def _defuse(text: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """Break special-token texts with a zero-width space so they tokenize as plain text."""
    return pattern.subn(lambda m: m[0][0] + ZWSP + m[0][1:], text)


def _attr(path: str) -> str:
    return path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def _block(tag: str, text: str, attrs: str = "") -> str:
    # starts with "<", ends with "\n": the pre-tokenizer never joins "\n" to a following non-space,
    # so each block tokenizes the same alone as inside the prompt (per-block counts add up exactly)
    return f"<{tag}{attrs}>\n{text}{'' if not text or text.endswith(chr(10)) else chr(10)}</{tag}>\n"


def _header(kept: list[str], dropped: list[str]) -> str:
    text = _block("files", "".join(f"{_attr(p)}\n" for p in kept))
    if dropped:
        text += _block("omitted", "".join(f"{_attr(p)}\n" for p in dropped), ' reason="over budget"')
    return text


def _folder(f: SourceFile) -> str:
    """``root/top`` for a file in a subfolder of its argument, ``root`` (or ``.``) for one at its top."""
    rel = f.path[len(f.root) + 1:] if f.root else f.path
    top = rel.split("/", 1)[0] if "/" in rel else ""
    return _join(f.root, top) or "."


def _encode(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)] if texts else []


@dataclass
class Ingested:
    """A built prompt: ``sum(parts.values()) == len(prompt_ids)``; ``parts["files"]`` is the sum of the
    files' block tokens; ``prefix_ids`` (all but the question and the assistant tag) is cache-reusable."""

    files: list[FileEntry]
    skipped: list[Skipped]
    dropped: list[Dropped]
    prompt_text: str
    prompt_ids: list[int]
    prefix_chars: int
    prefix_tokens: int
    parts: dict[str, int]
    budget_tokens: int

    @property
    def prefix_text(self) -> str:
        return self.prompt_text[: self.prefix_chars]

    @property
    def prefix_ids(self) -> list[int]:
        return self.prompt_ids[: self.prefix_tokens]

    @property
    def total_tokens(self) -> int:
        return len(self.prompt_ids)

    def summary(self) -> dict[str, Any]:
        """JSON-able: files in (with tokens), skipped (with reasons), dropped, tokens per top-level folder."""
        folders: dict[str, int] = {}
        for f in self.files:
            folders[f.folder] = folders.get(f.folder, 0) + f.tokens
        warnings = [] if self.files else ["no files were included"]
        return {
            "files": [asdict(f) for f in self.files],
            "skipped": [asdict(s) for s in self.skipped],
            "dropped": [asdict(d) for d in self.dropped],
            "folders": dict(sorted(folders.items())),
            "tokens": dict(self.parts),
            "total_tokens": self.total_tokens,
            "prefix_tokens": self.prefix_tokens,
            "budget_tokens": self.budget_tokens,
            "fits": self.total_tokens <= self.budget_tokens,
            "warnings": warnings,
        }


def build_prompt(
    files: Sequence[SourceFile],
    question: str,
    *,
    tokenizer: Tokenizer,
    budget_tokens: int,
    stdin_text: str | None = None,
    skipped: Sequence[Skipped] = (),
    thinking_mode: str = "chat",
    verify: bool = False,
) -> Ingested:
    """One user message: file listing, ``<file>`` blocks, ``<stdin>``, the question last; fit to the budget.

    Drops whole files, largest first (ties: later in order first), until the prompt fits; raises
    `BudgetError` when the question, stdin and listing alone do not fit. ``prompt_ids`` are the blocks'
    ids joined; ``verify`` also tokenizes the whole text and checks it gives the same ids (slower).
    """
    tok = tokenizer
    special = _defuser(frozenset(t.content for t in tok.get_added_tokens_decoder().values() if t.content))
    notes = [list(f.notes) for f in files]
    blocks = []
    for f, fnotes in zip(files, notes, strict=True):
        text, n = _defuse(f.text, special)
        if n:
            fnotes.append(f"special-token text defused ({n})")
        blocks.append(_block("file", text, f' path="{_defuse(_attr(f.path), special)[0]}"'))
    paths = [_defuse(f.path, special)[0] for f in files]
    stdin = _block("stdin", _defuse(stdin_text, special)[0]) if stdin_text is not None else ""
    q = _defuse(question.strip(), special)[0]
    head, tail = encode_messages([{"role": "user", "content": "\0"}], thinking_mode=thinking_mode).split("\0")

    ids = _encode(tok, blocks)
    sizes = [len(x) for x in ids]
    head_ids, tail_ids = encode_prompt_ids(head, tok), encode_prompt_ids(tail, tok)
    stdin_ids, q_ids = _encode(tok, [stdin, q])
    lines = sum(map(len, _encode(tok, [f"{_attr(p)}\n" for p in paths])))
    listing, omitted = map(len, _encode(tok, [_header([], []), _block("omitted", "", ' reason="over budget"')]))
    fixed = len(head_ids) + len(tail_ids) + len(stdin_ids) + len(q_ids) + lines + listing
    order = sorted(range(len(files)), key=lambda i: (-sizes[i], -i))
    slack = 0  # grows only if the listing estimate was low (a path starting with a space, say)
    while True:
        total, dropped_idx = fixed + sum(sizes) + slack, set()
        for i in order:
            if total <= budget_tokens:
                break
            total += omitted * (not dropped_idx) - sizes[i]
            dropped_idx.add(i)
        if total > budget_tokens:
            raise BudgetError(
                f"the question, stdin and file listing need {total} tokens with every file dropped, "
                f"over the budget of {budget_tokens}; ask with fewer files or a larger context"
            )
        kept = [i for i in range(len(files)) if i not in dropped_idx]
        header = _header([paths[i] for i in kept], [paths[i] for i in sorted(dropped_idx)])
        header_ids = _encode(tok, [header])[0]
        body_ids = [*head_ids, *header_ids, *(t for i in kept for t in ids[i]), *stdin_ids]
        if len(body_ids) + len(q_ids) + len(tail_ids) <= budget_tokens:
            break
        slack += len(body_ids) + len(q_ids) + len(tail_ids) - budget_tokens
    body = header + "".join(blocks[i] for i in kept) + stdin
    prompt_text = head + body + q + tail
    # blocks tokenize alone as in the prompt (see _block), so the ids concatenate; verify=True re-checks
    prompt_ids = body_ids + q_ids + tail_ids
    if verify and encode_prompt_ids(prompt_text, tok) != prompt_ids:
        raise RuntimeError("the prompt's blocks do not tokenize independently; token counts would be off")
    parts = {"chat": len(head_ids) + len(tail_ids), "header": len(header_ids), "files": sum(sizes[i] for i in kept),
             "stdin": len(stdin_ids), "question": len(q_ids)}
    return Ingested(
        files=[FileEntry(files[i].path, sizes[i], files[i].bytes, notes[i], _folder(files[i])) for i in kept],
        skipped=list(skipped),
        dropped=[Dropped(files[i].path, sizes[i]) for i in sorted(dropped_idx)],
        prompt_text=prompt_text,
        prompt_ids=prompt_ids,
        prefix_chars=len(head) + len(body),
        prefix_tokens=len(body_ids),
        parts=parts,
        budget_tokens=budget_tokens,
    )


def format_summary(summary: dict[str, Any], *, limit: int | None = 50) -> str:
    """Plain-text summary lines (the CLI colours them); lists longer than ``limit`` say how many are left."""

    def listing(rows: list[str]) -> list[str]:
        shown = rows if limit is None else rows[:limit]
        more = [f"  ... and {len(rows) - len(shown)} more"] if len(rows) > len(shown) else []
        return [f"  {r}" for r in shown] + more

    files, skipped, dropped = summary["files"], summary["skipped"], summary["dropped"]
    width = max((len(f["path"]) for f in files), default=0)
    out = [f"files in: {len(files)} ({summary['tokens']['files']:,} tokens)"]
    out += listing([
        f"{f['path']:<{width}}  {f['tokens']:>9,} tokens  {f['bytes']:>11,} bytes"
        + (f"  ({'; '.join(f['notes'])})" if f["notes"] else "")
        for f in files
    ])
    if skipped:
        out.append(f"skipped: {len(skipped)}")
        out += listing([f"{s['path']}: {s['reason']}" for s in skipped])
    if dropped:
        out.append(f"dropped to fit the budget: {len(dropped)} ({sum(d['tokens'] for d in dropped):,} tokens)")
        out += listing([f"{d['path']}: {d['tokens']:,} tokens, {d['reason']}" for d in dropped])
    if summary["folders"]:
        out.append("tokens per folder:")
        out += [f"  {name}: {n:,}" for name, n in summary["folders"].items()]
    t = summary["tokens"]
    out.append(
        f"total: {summary['total_tokens']:,} of {summary['budget_tokens']:,} tokens budget "
        f"(files {t['files']:,}, listing {t['header']:,}, stdin {t['stdin']:,}, question {t['question']:,}, "
        f"chat format {t['chat']:,})"
    )
    out += [f"warning: {w}" for w in summary["warnings"]]
    return "\n".join(out)
