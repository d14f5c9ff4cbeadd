"""The Anthropic Messages request bodies as pydantic models.

Permissive as DeepSeek is: clients such as Claude Code send fields newer than any published schema
(`thinking.type: adaptive`, `context_management`, `output_config`, a `system` role inside `messages`),
so unknown fields are kept and ignored; block types are checked in `anthropic.py`, which names them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Open = ConfigDict(extra="allow")


class Block(BaseModel):
    model_config = Open
    type: str
    text: str | None = None
    id: str | None = None  # tool_use
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None  # tool_result
    content: str | list[Block] | None = None
    is_error: bool | None = None
    thinking: str | None = None  # thinking
    signature: str | None = None


class Message(BaseModel):
    model_config = Open
    role: str
    content: str | list[Block]


class ToolDef(BaseModel):
    model_config = Open
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent; server tools (web_search_...) are refused by name


class ToolChoice(BaseModel):
    model_config = Open
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None  # ignored, as DeepSeek


class ThinkingConfig(BaseModel):
    model_config = Open
    type: str = "enabled"
    budget_tokens: int | None = None  # ignored, as DeepSeek
    display: str | None = None  # "omitted": thinking happens, its text is not returned


class OutputConfig(BaseModel):
    model_config = Open
    effort: str | None = None


class Metadata(BaseModel):
    model_config = Open
    user_id: str | None = None


class CountTokensRequest(BaseModel):
    model_config = Open
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool | None = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # ignored, as DeepSeek
    metadata: Metadata | None = None
