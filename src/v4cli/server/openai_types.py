"""The OpenAI-format request bodies as pydantic models: the OpenAPI schema clients and schemathesis read.

Permissive where DeepSeek is (unknown fields are kept and ignored), typed where a wrong type would
silently change the answer. Value rules that need more than a type (ranges, names, which tool_choice
thinking allows) are checked in `openai.py`, so each refusal can name its parameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Open = ConfigDict(extra="allow")


class FunctionDef(BaseModel):
    model_config = Open
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = Open
    type: str = "function"
    function: FunctionDef


class CallFunction(BaseModel):
    model_config = Open
    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCallIn(BaseModel):
    model_config = Open
    id: str | None = None
    type: str = "function"
    function: CallFunction


class ContentPart(BaseModel):
    model_config = Open
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = Open
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    prefix: bool | None = None


class Thinking(BaseModel):
    model_config = Open
    type: str = "enabled"


class ResponseFormat(BaseModel):
    model_config = Open
    type: str = "text"


class StreamOptions(BaseModel):
    model_config = Open
    include_usage: bool | None = None
    include_progress: bool | None = None  # ours: prefill progress chunks (llama.cpp's return_progress)


class Sampling(BaseModel):
    """Fields both endpoints share."""

    model_config = Open
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    user_id: str | None = None  # DeepSeek's isolation key (OpenAI SDK: extra_body)
    return_progress: bool | None = None
    thinking: Thinking | None = None


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    reasoning_effort: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    suffix: str | None = None
    echo: bool | None = None
    logprobs: int | None = None
    n: int | None = None
