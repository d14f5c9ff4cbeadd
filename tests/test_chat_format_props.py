"""Property tests: encode -> parse gives the assistant turns back; streaming equals whole-text parsing."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from v4cli.chat_format import (
    BOS,
    DSML,
    EOS,
    THINK_END,
    THINK_START,
    ContentDelta,
    ReasoningDelta,
    StreamParser,
    collect_events,
    defuse,
    encode_messages,
    load_tokenizer,
    parse_completion,
)

FORBIDDEN = (BOS, EOS, THINK_START, THINK_END, DSML)  # special tokens: never plain text in a turn
TRICKY = ["<", ">", "/", '"', "'", "\n", "\n\n", "{", "}", "\\", "｜", "</think", "<think", "<｜DSML",
          "</｜DSML", "<｜end▁of", "</tool_result>", "<｜User｜>", " ", "é", "中文", "🙂", "\t"]

def fast(n: int) -> settings:
    """Per-test settings (a global profile would change other modules' property tests too)."""
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])



def ids(i: int) -> str:
    return f"call_{i}"


clean_text = (
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=("Cs",)), max_size=6)),
             max_size=6)
    .map("".join)
    .filter(lambda s: not any(m in s for m in FORBIDDEN))
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
keys = st.one_of(names, clean_text.filter(lambda s: s and '"' not in s))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | clean_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(clean_text, inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(keys, json_values, max_size=4)


@st.composite
def tool_call(draw: st.DrawFn) -> dict[str, Any]:
    args = draw(arguments)
    raw: Any = args if draw(st.booleans()) else json.dumps(args, ensure_ascii=draw(st.booleans()))
    return {"id": "c" + draw(st.text("0123456789abcdef", min_size=4, max_size=8)), "type": "function",
            "function": {"name": draw(names), "arguments": raw}}


@st.composite
def assistant(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": draw(st.one_of(st.none(), clean_text))}
    if draw(st.booleans()):
        msg["reasoning_content"] = draw(clean_text)
    calls = draw(st.lists(tool_call(), max_size=3))
    if calls:
        msg["tool_calls"] = calls
    return msg


@st.composite
def conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        system: dict[str, Any] = {"role": "system", "content": draw(clean_text)}
        tools = draw(st.lists(st.builds(lambda n, d, p: {"type": "function", "function": {
            "name": n, "description": d, "parameters": {"type": "object", "properties": p}}},
            names, clean_text, st.dictionaries(names, st.just({"type": "string"}), max_size=2)), max_size=2))
        if tools:
            system["tools"] = tools
        msgs.append(system)
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(clean_text)})
        turn = draw(assistant())
        msgs.append(turn)
        for c in turn.get("tool_calls", [])[: draw(st.integers(0, 3))]:
            msgs.append({"role": "tool", "tool_call_id": c["id"], "content": draw(clean_text)})
    return msgs


def completions(msgs: list[dict[str, Any]], mode: str) -> list[tuple[dict[str, Any], str]]:
    """(assistant message, the text the model would have generated for it) for every assistant turn."""
    out = []
    for i, msg in enumerate(msgs):
        if msg["role"] == "assistant":
            prompt = encode_messages(msgs[:i], mode)
            full = encode_messages(msgs[: i + 1], mode)
            assert full.startswith(prompt)  # the prompt is a prefix of the conversation that follows
            out.append((msg, full[len(prompt) :]))
    return out


def args_dict(raw: Any) -> Any:
    return raw if isinstance(raw, dict) else json.loads(raw)


def defused(value: Any) -> Any:
    """What comes back from the prompt: every string (keys too) defused, as the encoder writes it."""
    if isinstance(value, str):
        return defuse(value)
    if isinstance(value, dict):
        return {defuse(k): defused(v) for k, v in value.items()}
    if isinstance(value, list):
        return [defused(v) for v in value]
    return value


@fast(60)
@given(conversation(), st.sampled_from(["thinking", "chat"]))
def test_encode_then_parse_gives_the_assistant_turns_back(msgs: list[dict[str, Any]], mode: str) -> None:
    for msg, text in completions(msgs, mode):
        got = parse_completion(text, mode, id_factory=ids)
        assert got["warnings"] == [] and got["saw_eos"]
        # special-token text a client sends (``<｜User｜>`` is among the TRICKY pieces) comes back defused
        want_reasoning = defuse(msg.get("reasoning_content") or "") if mode == "thinking" else ""
        assert got["reasoning_content"] == want_reasoning
        assert got["content"] == defuse(msg["content"] or "")
        want = [(c["function"]["name"], defused(args_dict(c["function"]["arguments"])))
                for c in msg.get("tool_calls", [])]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got["tool_calls"]] == want


def stream(text: str, mode: str, cuts: list[int]) -> tuple[dict[str, Any], list[Any]]:
    parser = StreamParser(mode, ids)
    events: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(text)]
    for a, b in pairwise(bounds):
        events += parser.feed(text[a:b])
    events += parser.finish()
    return collect_events(events), events


@st.composite
def split_points(draw: st.DrawFn, text: str) -> list[int]:
    if draw(st.booleans()):
        return list(range(1, len(text)))  # one character at a time
    return draw(st.lists(st.integers(0, len(text)), max_size=12))


@fast(40)
@given(conversation(), st.sampled_from(["thinking", "chat"]), st.data())
def test_stream_matches_whole_parse_on_model_output(msgs: list[dict[str, Any]], mode: str, data: Any) -> None:
    for _, text in completions(msgs, mode):
        whole = parse_completion(text, mode, id_factory=ids)
        got, events = stream(text, mode, data.draw(split_points(text)))
        assert got == whole
        shown = {ContentDelta: "", ReasoningDelta: ""}
        for ev in events:  # every delta extends the final text: no marker piece is ever shown and retracted
            if isinstance(ev, (ContentDelta, ReasoningDelta)):
                shown[type(ev)] += ev.text
                assert whole["content"].startswith(shown[ContentDelta])
                assert whole["reasoning_content"].startswith(shown[ReasoningDelta])
        assert all(ev.text for ev in events if isinstance(ev, (ContentDelta, ReasoningDelta)))


GARBAGE = [THINK_END, THINK_START, EOS, BOS, "\n\n", "\n", " ", f"<{DSML}tool_calls>", f"</{DSML}tool_calls>",
           f'<{DSML}invoke name="f">', f"</{DSML}invoke>", f'<{DSML}parameter name="a" string="true">',
           f'<{DSML}parameter name="b" string="false">', f"</{DSML}parameter>", f"<{DSML}", f"</{DSML}",
           f"<{DSML}foo>", f'<{DSML}invoke name="x', "[1, 2]", "{", ">", "<", '"', "text", "é🙂"]


@fast(150)
@given(st.lists(st.sampled_from(GARBAGE), max_size=14).map("".join),
       st.sampled_from(["thinking", "chat"]), st.data())
def test_stream_matches_whole_parse_on_any_text(text: str, mode: str, data: Any) -> None:
    whole = parse_completion(text, mode, id_factory=ids)  # never raises, whatever the text
    got, _ = stream(text, mode, data.draw(split_points(text)))
    assert got == whole
    for c in whole["tool_calls"]:
        assert isinstance(json.loads(c["function"]["arguments"]), dict)  # always a JSON object
    if "é🙂" in text:  # plain text survives somewhere: reasoning, content or a call's arguments
        assert "é🙂" in whole["reasoning_content"] + whole["content"] + json.dumps(whole["tool_calls"],
                                                                                 ensure_ascii=False)


# -- special-token text anywhere a client can put text: only the encoder's own tokens reach the ids -----------------
PIECES = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>", "｜DSML｜", "<dsml:",
          "<｜/table>｜", "<｜latest_reminder｜>", "<|EOT|>", "<", "｜", ">", "<｜", "｜>", "<thi", "nk>", "</", "User",
          "end▁of▁sentence", "DSML｜", "x", "\n"]
HALVES = ["<thi", "nk>", "<｜Assis", "tant｜>"]  # meet across fields with no template text between them
forged_text = st.lists(st.sampled_from(PIECES), max_size=5).flatmap(
    lambda mid: st.tuples(st.sampled_from(["", *HALVES]), st.sampled_from(["", *HALVES])).map(
        lambda ends: ends[0] + "".join(mid) + ends[1]))


@st.composite
def forged_conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Any roles in any order (a system prompt straight before an assistant turn, two assistant turns, ...),
    with forged text in every field."""
    msgs: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["system", "user", "assistant", "tool", "latest_reminder", "developer"]))
        msg: dict[str, Any] = {"role": role, "content": draw(forged_text)}
        if role == "developer":
            msg["content"] += "d"  # a developer turn needs content
        if role == "assistant":
            msg["reasoning_content"] = draw(forged_text)
            msg["wo_eos"] = draw(st.booleans())
            if draw(st.booleans()):
                msg["tool_calls"] = [{"id": "c0", "type": "function", "function": {
                    "name": draw(forged_text), "arguments": {draw(forged_text): draw(forged_text)}}}]
        if role == "system" and draw(st.booleans()):
            msg["tools"] = [{"type": "function", "function": {"name": draw(forged_text)}}]
        msgs.append(msg)
    return msgs


def texts_mapped(msgs: list[dict[str, Any]], f: Any) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        m = {**m, "content": f(m["content"])}
        if "reasoning_content" in m:
            m["reasoning_content"] = f(m["reasoning_content"])
        if "tool_calls" in m:
            fn = m["tool_calls"][0]["function"]
            m["tool_calls"] = [{**m["tool_calls"][0], "function": {
                "name": f(fn["name"]), "arguments": {f(k): f(v) for k, v in fn["arguments"].items()}}}]
        if "tools" in m:
            m["tools"] = [{"type": "function", "function": {"name": f(m["tools"][0]["function"]["name"])}}]
        out.append(m)
    return out


@fast(60)
@given(forged_conversation(), st.sampled_from(["thinking", "chat"]))
def test_forged_text_never_adds_a_special_token(msgs: list[dict[str, Any]], mode: str) -> None:
    tok = load_tokenizer()
    special = set(tok.get_added_tokens_decoder())
    prompt = encode_messages(msgs, mode)
    harmless = encode_messages(texts_mapped(msgs, lambda s: "x" * bool(s) + "d" * s.endswith("d")), mode)
    got = [i for i in tok.encode(prompt, add_special_tokens=False).ids if i in special]
    want = [i for i in tok.encode(harmless, add_special_tokens=False).ids if i in special]
    assert got == want  # the same special tokens, in the same order
    assert encode_messages(texts_mapped(msgs, defuse), mode) == prompt  # defused input: the same prompt
