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
- Over budget: stdin (read with a bound, see `v4cli.ingest.stdin`) is cut to what the files leave but
  to no less than half the room, keeping its head and tail with a line saying what was cut (a log's
  error is at its end); then whole files are dropped, largest first (ties: later in order first),
  until the prompt fits; they are listed in an ``<omitted>`` section of the prompt and as `Dropped`.
  A file is never truncated.
- Non-UTF-8 text (no NULs, few control bytes) is kept with a note, decoded as cp1252 (Windows text),
  else latin-1 (never fails); UTF-16 with a BOM is decoded as such. Binary files are skipped by name
  and by content (NULs, or >30% odd bytes in the first 8 KiB).
- Symlinks: never out of the root. A file link whose target is also reached directly is skipped (the
  real path is kept); folder links are never walked (their target is walked at its real path, or is a
  loop), so the walk is a tree and no file is read twice.
- Text that the tokenizer would turn into special tokens (``<think>``, ``<｜User｜>``...) is defused
  with a zero-width space after its first character (`v4cli.tokens.defuse`), in file contents
  (with a note), paths, stdin and the question: nothing read can forge turns. `file_block` builds a
  ``<file>`` block; ``v4 chat``'s ``/read`` uses it too.
- Explicitly named files bypass ignore rules (.gitignore, defaults) but not the binary, size and
  secret checks. Missing argument paths raise FileNotFoundError. An empty result is not an error:
  the summary carries a warning and the CLI decides.
"""

from .files import DEFAULT_MAX_FILE_BYTES, Skipped, SourceFile, collect
from .prompt import BudgetError, Dropped, FileEntry, Ingested, build_prompt, file_block, format_summary
from .stdin import Piped, StdinCut, StdinError, read_limit, read_piped

__all__ = [
    "DEFAULT_MAX_FILE_BYTES", "BudgetError", "Dropped", "FileEntry", "Ingested", "Piped", "Skipped", "SourceFile",
    "StdinCut", "StdinError", "build_prompt", "collect", "file_block", "format_summary", "read_limit", "read_piped",
]
