"""Step two of `v4 ask` ingestion: lay the collected files out as one prompt, count it exactly with the
V4 tokenizer and fit it to a token budget (layout and drop policy: see `v4cli.ingest`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from v4cli.chat_format import defuse, encode_messages, encode_prompt_ids

from ..errors import UserError
from .files import Skipped, SourceFile, _join
from .stdin import MIN_STDIN_TOKENS, Piped, StdinCut, fit_piped

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class BudgetError(UserError, ValueError):
    """The question and the fixed parts alone do not fit the token budget."""


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
class Dropped:
    path: str
    tokens: int
    reason: str = "over budget"


# ------------------------------------------------------------------------------------------ build_prompt

def _attr(path: str) -> str:
    return path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def _block(tag: str, text: str, attrs: str = "") -> str:
    # starts with "<", ends with "\n": the pre-tokenizer never joins "\n" to a following non-space,
    # so each block tokenizes the same alone as inside the prompt (per-block counts add up exactly)
    return f"<{tag}{attrs}>\n{text}{'' if not text or text.endswith(chr(10)) else chr(10)}</{tag}>\n"


def file_block(path: str, text: str, tokenizer: Tokenizer | None = None) -> tuple[str, int]:
    """A ``<file path="...">`` block of the prompt, path and text defused with `defuse` (``tokenizer``'s
    added tokens; default V4's); also how many special-token texts the file's text had."""
    safe = defuse(text, tokenizer)
    return _block("file", safe, f' path="{defuse(_attr(path), tokenizer)}"'), len(safe) - len(text)


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
    stdin: StdinCut | None = None  # what was cut of stdin to fit (None: all of it is in, or there was none)

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
        if self.stdin is not None:
            warnings.append(self.stdin.describe())
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
            "stdin": None if self.stdin is None else self.stdin.as_dict(),
            "warnings": warnings,
        }


def build_prompt(
    files: Sequence[SourceFile],
    question: str,
    *,
    tokenizer: Tokenizer,
    budget_tokens: int,
    stdin_text: str | Piped | None = None,
    skipped: Sequence[Skipped] = (),
    thinking_mode: str = "chat",
    verify: bool = False,
) -> Ingested:
    """One user message: file listing, ``<file>`` blocks, ``<stdin>``, the question last; fit to the budget.

    Stdin is a source like the files: when it does not fit beside them it is cut (`fit_piped`: head and
    tail, a line saying what was cut) to what the files leave, but to no less than half the room. Then
    whole files are dropped, largest first (ties: later in order first), until the prompt fits; raises
    `BudgetError` when the question and listing leave no room. ``prompt_ids`` are the blocks' ids joined;
    ``verify`` also tokenizes the whole text and checks it gives the same ids (slower).
    """
    tok = tokenizer
    notes = [list(f.notes) for f in files]
    blocks = []
    for f, fnotes in zip(files, notes, strict=True):
        block, n = file_block(f.path, f.text, tok)
        if n:
            fnotes.append(f"special-token text defused ({n})")
        blocks.append(block)
    paths = [defuse(f.path, tok) for f in files]
    q = defuse(question.strip(), tok)
    head, tail = encode_messages([{"role": "user", "content": "\0"}], thinking_mode=thinking_mode).split("\0")

    ids = _encode(tok, blocks)
    sizes = [len(x) for x in ids]
    head_ids, tail_ids = encode_prompt_ids(head, tok), encode_prompt_ids(tail, tok)
    (q_ids,) = _encode(tok, [q])
    lines = sum(map(len, _encode(tok, [f"{_attr(p)}\n" for p in paths])))
    listing, omitted = map(len, _encode(tok, [_header([], []), _block("omitted", "", ' reason="over budget"')]))
    fixed = len(head_ids) + len(tail_ids) + len(q_ids) + lines + listing
    wrap = lambda t: _block("stdin", t)
    piped = Piped(stdin_text, len(stdin_text.encode())) if isinstance(stdin_text, str) else stdin_text
    stdin, stdin_ids, cut, reserve = "", [], None, 0
    if piped is not None:
        safe = defuse(piped.text, tok)
        whole = tok.encode(wrap(safe), add_special_tokens=False)
        # stdin keeps at least half the room when files compete for it (files drop first), then gets what they leave
        need = len(whole.ids) + (0 if piped.complete else 32)
        reserve = min(need, max((budget_tokens - fixed) // 2 - omitted, MIN_STDIN_TOKENS)) if files else need
    order = sorted(range(len(files)), key=lambda i: (-sizes[i], -i))
    slack = 0  # grows only if the listing estimate was low (a path starting with a space, say)
    while True:
        total, dropped_idx = fixed + reserve + sum(sizes) + slack, set()
        for i in order:
            if total <= budget_tokens:
                break
            total += omitted * (not dropped_idx) - sizes[i]
            dropped_idx.add(i)
        if total > budget_tokens and piped is None:
            raise BudgetError(
                f"the question and file listing need {total} tokens with every file dropped, "
                f"over the budget of {budget_tokens}; ask with fewer files or a larger context"
            )
        kept = [i for i in range(len(files)) if i not in dropped_idx]
        header = _header([paths[i] for i in kept], [paths[i] for i in sorted(dropped_idx)])
        header_ids = _encode(tok, [header])[0]
        others = len(head_ids) + len(header_ids) + sum(sizes[i] for i in kept) + len(q_ids) + len(tail_ids)
        if piped is not None:
            fitted = fit_piped(piped, safe, budget_tokens - others - slack, tok, wrap, whole)
            if fitted is None:
                raise BudgetError(
                    f"the question and file listing need {others} tokens, leaving {max(budget_tokens - others, 0)} "
                    f"of the budget of {budget_tokens} for stdin (at least {MIN_STDIN_TOKENS} are needed); ask "
                    "with fewer files or a larger context")
            stdin, stdin_ids, cut = fitted
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
        stdin=cut,
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
