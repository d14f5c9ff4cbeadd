"""Structured output by grammar (design decision 7): ``response_format: json_object`` and tool calls
(``tool_choice`` required / named, and strict tools under auto) constrain decoding through llguidance,
so even a random-weight model returns valid JSON and schema-valid DSML tool calls.

Each factory returns a fresh, stateful `GrammarProcessor` for one request (a `SamplingParams` logits
processor), or None when nothing needs constraining. The output is closed within ``max_tokens``: a
cut answer still parses (the finish reason stays ``length``). Grammars are in `lark`, the processor
and its budget in `processor`; ``bench/grammar_overhead.py`` measures the cost per token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..chat_format import DSML_ID, THINK_END_ID
from .lark import json_grammar, tools_grammar
from .processor import JSON, REASON, TAGS, TEXT, GrammarProcessor, Vocab

__all__ = ["GrammarProcessor", "Vocab", "json_object", "tool_calls", "vocab"]

_VOCABS: list[tuple[Any, Vocab]] = []  # (tokenizer, its Vocab); the tokenizer is kept so its id stays its own


def vocab(tokenizer: Any) -> Vocab:
    """The llguidance vocabulary for a `tokenizers.Tokenizer`, built once per tokenizer (a few seconds:
    worth calling when the model loads)."""
    for tok, v in _VOCABS:
        if tok is tokenizer:
            return v
    v = Vocab(tokenizer)
    _VOCABS.append((tokenizer, v))
    del _VOCABS[:-4]
    return v


def json_object(tokenizer: Any, *, thinking: bool, max_tokens: int) -> GrammarProcessor:
    """The content is one JSON object (any); in thinking mode free reasoning and ``</think>`` come first."""
    return GrammarProcessor(vocab(tokenizer), json_grammar(thinking=thinking), start=REASON if thinking else JSON,
                            after_think=JSON, max_tokens=max_tokens)


def tool_calls(tokenizer: Any, tools: Sequence[Mapping[str, Any]], *, choice: str = "auto", thinking: bool = False,
               max_tokens: int, json_content: bool = False) -> GrammarProcessor | None:
    """Tool calls as DSML (``tools`` OpenAI-style, ``choice`` "auto", "required", "none" or a tool name).

    required: one or more invokes, then EOS; a name: exactly one invoke of that tool. Every invoke's
    parameters follow its tool's schema (schema order; required ones present; strings raw with
    ``string="true"``, the rest JSON with ``string="false"``). auto: the content is free (one JSON
    object with ``json_content``: response_format json_object); once the model starts a block (``<``
    and the DSML token) strict tools are schema-valid and the others take any parameters. None for
    "none", and for auto without a strict tool or JSON content.
    """
    grammar = tools_grammar(tools, choice=choice, thinking=thinking, json_content=json_content)
    if grammar is None:
        return None
    after = TAGS if choice != "auto" else JSON if json_content else TEXT
    v = vocab(tokenizer)
    # The planner sizes the budget's safety margin from the costliest tool; under auto it looks from inside a block.
    probe = [THINK_END_ID] if thinking else []
    if choice == "auto":
        probe += v.ll.tokenize_str("{}\n\n<" if json_content else "<") + [DSML_ID]
    return GrammarProcessor(v, grammar, start=REASON if thinking else after, after_think=after,
                            max_tokens=max_tokens, probe=probe)
