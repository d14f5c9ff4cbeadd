"""A request's rules for the sampler, as logits processors: the output grammar (JSON mode, strict tool
schemas, a required or named tool: `v4cli.grammar`), no tool calls under tool_choice "none", and
OpenAI's presence and frequency penalties."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from . import chat_format
from .request import Request


class Ban:
    """Never pick these tokens (tool_choice "none": the DSML token that opens a tool-call block)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def __call__(self, history: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        logits[self.ids] = float("-inf")
        return logits


class Penalties:
    """OpenAI's rule: logit -= presence * [count > 0] + frequency * count, over the tokens generated."""

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence, self.frequency = presence, frequency

    def __call__(self, history: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        if not history:
            return logits
        counts = Counter(history)
        ids = torch.tensor(list(counts), dtype=torch.long)
        n = torch.tensor(list(counts.values()), dtype=logits.dtype)
        logits[ids] -= self.presence + self.frequency * n
        return logits


def grammar_for(req: Request, tokenizer: Any) -> Any:
    """The output grammar's processor, or None: tool calls (JSON content under auto when `json_output`),
    else a JSON object. Raw completions and assistant prefixes get none: the grammar cannot see where
    their text starts."""
    if req.text is not None or req.prefix or not (req.json_output or (req.tools and req.tool_choice != "none")):
        return None
    from . import grammar  # llguidance: only for requests that need a grammar

    thinking = req.parse_mode == "thinking"
    if req.tools and req.tool_choice != "none":
        return grammar.tool_calls(tokenizer, req.tools, choice=req.tool_choice, thinking=thinking,
                                  max_tokens=req.max_tokens, json_content=req.json_output)
    return grammar.json_object(tokenizer, thinking=thinking, max_tokens=req.max_tokens)


def processors(req: Request, tokenizer: Any) -> list[Any]:
    """Penalties first (they shift logits), then the masks. Raises ValueError when `max_tokens` is too
    small for any answer the grammar allows."""
    out: list[Any] = []
    if req.presence_penalty or req.frequency_penalty:
        out.append(Penalties(req.presence_penalty, req.frequency_penalty))
    if req.tools and req.tool_choice == "none":
        out.append(Ban([chat_format.DSML_ID]))
    proc = grammar_for(req, tokenizer)
    if proc is not None:
        if proc.min_tokens is not None and req.max_tokens < proc.min_tokens:
            what = "tool call" if req.tools and req.tool_choice != "auto" else "answer"
            raise ValueError(f"max_tokens is {req.max_tokens} but the shortest valid {what} takes "
                             f"{proc.min_tokens} tokens; raise max_tokens")
        out.append(proc)
    return out
