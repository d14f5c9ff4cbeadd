"""DeepSeek-V4 chat encoding (messages -> prompt text); the tokens themselves (ids, `defuse`, tokenizing a
prompt) are `v4cli.tokens`, re-exported here.

V4 ships no Jinja template; the format lives in the official ``encoding/encoding_dsv4.py``. This is an
independent implementation of that format, byte-identical on the official examples. Pure Python.

Layout of a prompt::

    BOS [effort preamble] SYSTEM [\\n\\n## Tools...] [\\n\\n## Response Format:...]
    <｜User｜>USER<｜Assistant｜><think>REASONING</think>CONTENT[\\n\\n<｜DSML｜tool_calls>...]EOS
    <｜User｜><tool_result>R1</tool_result>\\n\\n<tool_result>R2</tool_result><｜Assistant｜><think>

Rules kept from the official encoder (with the reason where it is not obvious):

- No ``tool`` role: tool messages become ``<tool_result>`` blocks of a user turn. A run of tool and
  user messages is one user turn (blocks joined by a blank line), tool results sorted into the order
  of the preceding assistant's ``tool_calls`` ids (unknown ids first, otherwise stable).
- ``<｜Assistant｜>`` plus ``<think>``/``</think>`` follows a user/developer turn only when the next
  message is an assistant or latest_reminder turn, or when it is the last message.
- Thinking mode with ``drop_thinking`` and no tools anywhere: assistant turns before the last
  user/developer turn lose their reasoning (and get ``</think>`` after ``<｜Assistant｜>``), and
  developer turns before it are dropped. Any ``tools`` keeps all reasoning: agents need it.
- ``reasoning_effort="max"`` adds the Think-Max preamble, thinking mode only, first message only.
- An assistant turn right after a message with a ``task`` carries no reasoning (a task answer).

Deliberate deviations (none changes the official examples): ``None`` contents render as ``""``
(the official code would print ``None``); a ``task`` on a user message merged into the previous user
turn is kept (the official merge loses it); empty tool-call arguments (``""``/``None``) mean ``{}``,
and non-object ones are wrapped as ``{"arguments": ...}`` like unparseable ones.

User text never becomes a control token. Every piece of text that comes from a message or a tool
definition (contents of every role, ``reasoning_content`` sent back, tool schemas, tool-call names,
argument keys and values, ``response_format``) goes through `defuse`: each added-token text of the V4
tokenizer in it (``<｜User｜>``, ``</think>``, ``<｜end▁of▁sentence｜>``, ``｜DSML｜``...) gets a zero-width
space (U+200B) after its first character. It reads the same to a person and the model sees it as the
plain characters, never as the token; so whatever a client sends, the only special tokens in the prompt
are the ones this encoder writes. Pieces of user text that meet with no template text between them
(a system prompt followed directly by an assistant turn, say) are defused together, so a token cannot be
split across two fields; template text next to user text starts with ``<``, a newline or ``"`` and ends
with a whole token, a newline or ``"``, which no V4 token can straddle (tests/test_chat_format.py checks
the token shapes this relies on). `defuse` is idempotent, so encoding messages that were already defused
(by the REPL, by ``v4 ask``) gives the same prompt. The official examples contain no special-token text
in their messages, so they are unchanged.

Assistant messages may carry ``reasoning_content`` (or ``reasoning``) and ``wo_eos`` (no EOS: a
partial answer the model continues). Parsing the model's output is `parse_completion` / `StreamParser`
(the rules for malformed output are in `v4cli.dsml`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from v4cli.dsml import (
    BOS,
    DSML,
    EOS,
    THINK_END,
    THINK_START,
    ContentDelta,
    Done,
    Event,
    ReasoningDelta,
    StreamParser,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from v4cli.tokens import (
    ASSISTANT,
    ASSISTANT_ID,
    BOS_ID,
    DSML_ID,
    EOS_ID,
    LATEST_REMINDER,
    SPECIAL_TOKEN_IDS,
    TASK_TOKENS,
    THINK_END_ID,
    THINK_START_ID,
    USER,
    USER_ID,
    ZWSP,
    check_special_tokens,
    defuse,
    encode_prompt_ids,
    load_tokenizer,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "ASSISTANT", "ASSISTANT_ID", "BOS", "BOS_ID", "DSML", "DSML_ID", "EOS", "EOS_ID", "LATEST_REMINDER",
    "SPECIAL_TOKEN_IDS", "TASK_TOKENS", "THINK_END", "THINK_END_ID", "THINK_START", "THINK_START_ID",
    "USER", "USER_ID", "ContentDelta", "Done", "Event", "ReasoningDelta", "StreamParser", "ToolCallDelta",
    "ToolCallEnd", "ToolCallStart", "collect_events", "parse_completion", "encode_messages",
    "render_tools", "render_tool_calls", "stop_token_ids", "load_tokenizer", "check_special_tokens",
    "encode_prompt_ids", "REASONING_EFFORT_MAX", "ZWSP", "defuse",
]

THINKING_MODES = ("thinking", "chat")
REASONING_EFFORTS = (None, "low", "medium", "high", "max")  # only "max" changes the prompt

REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the "
    "root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

_TOOLS_HEAD = f"""## Tools

You have access to a set of tools to help answer the user's question. \
You can invoke tools by writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types \
(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete reasoning \
inside {THINK_START}...{THINK_END} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_END} with tool calls or final response.

### Available Tool Schemas

"""
_TOOLS_TAIL = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
_RESPONSE_FORMAT_HEAD = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"

Message = Mapping[str, Any]

class _User(str):
    """A piece of prompt text that came from a message or a tool definition: defused when joined."""


def _join_parts(parts: Iterable[str]) -> str:
    """Join template text as it is and each run of adjacent `_User` pieces defused together."""
    out: list[str] = []
    run: list[str] = []
    for part in parts:
        if isinstance(part, _User) or not part:  # "" is no template text between two user pieces
            run.append(part)
            continue
        if run:
            out.append(defuse("".join(run)))
            run = []
        out.append(part)
    if run:
        out.append(defuse("".join(run)))
    return "".join(out)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(content: Any) -> str:
    """Message content as text: OpenAI content-part lists are joined by a blank line."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                kind = part.get("type")
                parts.append(_text(part.get("text")) if kind == "text" else f"[Unsupported {kind}]")
            else:
                parts.append(str(part))
        return "\n\n".join(parts)
    return str(content)


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``## Tools`` section for OpenAI-style tools (``{"type": "function", "function": {...}}``); the
    schemas are defused."""
    schemas = "\n".join(defuse(_json(tool.get("function", tool))) for tool in tools)
    return _TOOLS_HEAD + schemas + _TOOLS_TAIL


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}  # some clients send "" for a call without arguments
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        parsed = None
    # Unparseable arguments still reach the model, as one string parameter (as the official encoder).
    return parsed if isinstance(parsed, dict) else {"arguments": raw if isinstance(raw, str) else _json(raw)}


def render_tool_calls(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """The DSML block for OpenAI-style tool calls (``function.arguments`` a JSON string or a dict); names,
    keys and values are defused."""
    invokes = []
    for call in tool_calls:
        fn = call.get("function", call)
        params = "\n".join(
            f'<{DSML}parameter name="{defuse(str(key))}" string="{"true" if isinstance(value, str) else "false"}">'
            f"{defuse(value if isinstance(value, str) else _json(value))}</{DSML}parameter>"
            for key, value in _arguments(fn.get("arguments", "{}")).items()
        )
        invokes.append(f'<{DSML}invoke name="{defuse(str(fn.get("name", "")))}">\n{params}\n</{DSML}invoke>')
    body = "\n".join(invokes)
    return f"<{DSML}tool_calls>\n{body}\n</{DSML}tool_calls>"


def _merge_tool_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Fold tool messages (and user messages that follow them) into user turns of blocks."""
    merged: list[dict[str, Any]] = []
    for src in messages:
        msg = dict(src)
        role = msg.get("role")
        prev = merged[-1] if merged else None
        joinable = prev is not None and prev.get("role") == "user" and "_blocks" in prev
        if role == "tool":
            block = ("tool", _text(msg.get("content")), msg.get("tool_call_id") or "")
            if joinable:
                prev["_blocks"].append(block)
            else:
                merged.append({"role": "user", "_blocks": [block]})
        elif role == "user":
            block = ("text", _text(msg.get("content")), "")
            if joinable and prev.get("task") is None:
                prev["_blocks"].append(block)
                if msg.get("task") is not None:
                    prev["task"] = msg["task"]
            else:
                msg["_blocks"] = [block]
                merged.append(msg)
        else:
            merged.append(msg)
    return merged


def _sort_tool_results(messages: list[dict[str, Any]]) -> None:
    order: dict[str, int] = {}
    for msg in messages:
        if msg.get("role") == "assistant" and msg.get("tool_calls"):
            order = {call["id"]: i for i, call in enumerate(msg["tool_calls"]) if call.get("id")}
        elif msg.get("role") == "user" and "_blocks" in msg:
            slots = [i for i, block in enumerate(msg["_blocks"]) if block[0] == "tool"]
            if len(slots) > 1 and order:
                ranked = sorted((msg["_blocks"][i] for i in slots), key=lambda b: order.get(b[2], 0))
                blocks = list(msg["_blocks"])
                for slot, block in zip(slots, ranked, strict=True):
                    blocks[slot] = block
                msg["_blocks"] = blocks


def _last_user_index(messages: Sequence[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") in ("user", "developer"):
            return i
    return -1


def _render(i: int, msgs: list[dict[str, Any]], thinking: bool, drop: bool, effort: str | None) -> list[str]:
    """Message ``i`` as template text and `_User` pieces (see `_join_parts`)."""
    msg, role = msgs[i], msgs[i].get("role")
    last_user = _last_user_index(msgs)
    out: list[str] = [REASONING_EFFORT_MAX if i == 0 and thinking and effort == "max" else ""]
    if role in ("system", "developer"):
        content = _text(msg.get("content"))
        if role == "developer":
            if not content:
                raise ValueError(f"developer message needs content: {msg!r}")
            out.append(USER)
        out.append(_User(content))
        if msg.get("tools"):
            out.append("\n\n" + render_tools(msg["tools"]))
        if msg.get("response_format"):
            out += ["\n\n" + _RESPONSE_FORMAT_HEAD, _User(_json(msg["response_format"]))]
    elif role == "user":
        blocks = msg.get("_blocks") or [("text", _text(msg.get("content")), "")]
        out.append(USER)
        for n, (kind, text, _) in enumerate(blocks):
            out += ["\n\n"] * (n > 0)
            out += ["<tool_result>", _User(text), "</tool_result>"] if kind == "tool" else [_User(text)]
    elif role == "latest_reminder":
        out += [LATEST_REMINDER, _User(_text(msg.get("content")))]
    elif role == "assistant":
        reasoning = msg.get("reasoning_content", msg.get("reasoning"))
        answers_task = i > 0 and msgs[i - 1].get("task") is not None
        if thinking and not answers_task and (not drop or i > last_user):
            out += [_User(_text(reasoning)), THINK_END]
        out.append(_User(_text(msg.get("content"))))
        if msg.get("tool_calls"):
            out.append("\n\n" + render_tool_calls(msg["tool_calls"]))
        if not msg.get("wo_eos"):  # wo_eos: an unfinished assistant turn the model continues
            out.append(EOS)
    else:
        raise ValueError(f"unknown role {role!r}")

    if i + 1 < len(msgs) and msgs[i + 1].get("role") not in ("assistant", "latest_reminder"):
        return out
    task = msg.get("task")
    if task is not None:
        if task not in TASK_TOKENS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_TOKENS)}")
        if task == "action":
            out.append(ASSISTANT + (THINK_START if thinking else THINK_END))
        out.append(TASK_TOKENS[task])
    elif role in ("user", "developer"):
        out.append(ASSISTANT + (THINK_START if thinking and (not drop or i >= last_user) else THINK_END))
    return out


def encode_messages(
    messages: Sequence[Message],
    thinking_mode: str = "thinking",
    *,
    reasoning_effort: str | None = None,
    drop_thinking: bool = True,
    context: Sequence[Message] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_bos: bool = True,
) -> str:
    """Encode OpenAI-style messages into the V4 prompt text.

    ``context``: messages already encoded (a prompt prefix); only ``messages`` are rendered, with no
    BOS, but the context still decides reasoning dropping and tool-result order.
    ``tools``: a convenience for the OpenAI top-level ``tools``; they are put on the first system
    message (of the context when given), or on a new empty system message in front.
    All text from the messages and tools is defused (see the module docstring): the prompt's special
    tokens are only the ones the format writes.
    """
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be one of {THINKING_MODES}, not {thinking_mode!r}")
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, not {reasoning_effort!r}")
    ctx, new = list(context or []), list(messages)
    if tools:
        target = ctx if ctx else new
        if target and target[0].get("role") == "system":
            target[0] = {**target[0], "tools": list(target[0].get("tools") or []) + list(tools)}
        else:
            target.insert(0, {"role": "system", "content": "", "tools": list(tools)})
    merged_ctx = _merge_tool_messages(ctx)
    full = merged_ctx + _merge_tool_messages(new)
    _sort_tool_results(full)
    thinking = thinking_mode == "thinking"
    drop = drop_thinking and not any(m.get("tools") for m in full)
    start = len(merged_ctx)
    if thinking and drop:
        last_user = _last_user_index(full)
        kept = []
        for i, msg in enumerate(full):
            if i < last_user and msg.get("role") == "assistant":
                msg = {k: v for k, v in msg.items() if k not in ("reasoning_content", "reasoning")}
            elif i < last_user and msg.get("role") not in ("user", "system", "latest_reminder"):
                start -= i < len(merged_ctx)  # earlier developer turns are dropped (official rule)
                continue
            kept.append(msg)
        full = kept
    parts = [BOS if add_bos and not ctx else ""]
    for i in range(start, len(full)):
        parts += _render(i, full, thinking, drop, reasoning_effort)
    return _join_parts(parts)


def collect_events(events: Iterable[Event]) -> dict[str, Any]:
    """Fold events into an OpenAI-style assistant message plus ``warnings`` and ``saw_eos`` (through
    `events.Reply`, the one fold of an answer)."""
    from v4cli.events import Reply, tool_call_dict

    reply = Reply()
    reply.fold(list(events))
    return {"role": "assistant", "reasoning_content": reply.reasoning, "content": reply.content,
            "tool_calls": [tool_call_dict(c) for c in reply.tool_calls], "warnings": list(reply.warnings),
            "saw_eos": reply.saw_eos}


def parse_completion(
    text: str, thinking_mode: str = "thinking", id_factory: Callable[[int], str] | None = None
) -> dict[str, Any]:
    """Parse the text generated after the prompt (EOS optional). Never raises on malformed text."""
    parser = StreamParser(thinking_mode, id_factory)
    return collect_events(parser.feed(text) + parser.finish())


def stop_token_ids(thinking_mode: str = "thinking") -> list[int]:
    """Ids that end generation: EOS, and ``<｜User｜>`` as a guard against a hallucinated next turn."""
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be one of {THINKING_MODES}, not {thinking_mode!r}")
    return [EOS_ID, USER_ID]
