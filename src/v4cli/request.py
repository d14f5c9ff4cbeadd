"""The one internal request type: what the REPL, `ask` and both server dialects ask the engine for.

Dialect conversion (OpenAI, Anthropic) happens at the server's edge and ends here; `LocalBackend`
turns a `Request` into prompt ids, sampling parameters and a grammar, and nothing below it knows
which client asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ToolChoice = str  # "auto", "none", "required", or the name of the one tool to call


@dataclass
class Request:
    """One generation. Either `messages` (chat; encoded with the V4 chat format), `text` (a raw
    completion prompt, with `suffix` for fill-in-the-middle) or `prompt_ids` (already encoded)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    thinking: bool = True
    effort: str | None = None  # None, "high" or "max" (what the encoder knows)
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style function tools
    tool_choice: ToolChoice = "auto"
    json_output: bool = False  # response_format json_object: the content is one JSON object
    prefix: bool = False  # the last message is an assistant prefix the answer continues
    text: str | None = None  # raw prompt (completions)
    suffix: str | None = None  # FIM: the text after the hole
    prompt_ids: list[int] | None = None
    cache_prefix: int | None = None  # also snapshot after this many prompt tokens
    max_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; n: each token's logprob and its n best alternatives
    user: str = ""  # isolates the prefix cache between users

    @property
    def parse_mode(self) -> str:
        """How the output is parsed: a prefix continues the content; raw completions are content."""
        return "thinking" if self.thinking and not self.prefix and self.text is None else "chat"
