"""JSON: JSON-mode requests (`response_format: json_object`, the prompt saying "json" with an example, as
DeepSeek asks), scored for output that parses as an object and for the keys asked for. A format without
a JSON mode (Anthropic's Messages) sends none of them: the summary says why instead of scoring failures."""

from __future__ import annotations

from typing import Any

from . import scorers
from .runner import Item, Run, rate

NAME = "json"

# (case, instruction, keys asked for)
CASES: list[tuple[str, str, list[str]]] = [
    ("flat", 'Describe the city of Lyon as json, for example {"name": "...", "country": "...", "population": 0}.',
     ["name", "country", "population"]),
    ("nested", 'Return json describing a book: {"title": "...", "author": {"name": "...", "born": 0}, '
               '"tags": ["..."]}.', ["title", "author", "tags"]),
    ("extract", 'Extract the order from this text as json with keys "item", "quantity" and "express" '
                '(a boolean): "Please send 3 blue kettles by express post."', ["item", "quantity", "express"]),
]


def planned(r: Run) -> int:
    return 0 if r.client.json_mode_note else len(CASES)


def run(r: Run) -> dict[str, Any]:
    if r.client.json_mode_note:
        return {"valid": None, "keys": None, "unsupported": r.client.json_mode_note, "cases": [c[0] for c in CASES]}
    items = []
    for case, text, keys in CASES:
        body = {"messages": [{"role": "system", "content": "You answer in json only."},
                             {"role": "user", "content": text}],
                "response_format": {"type": "json_object"}, "max_tokens": r.budget(), **r.thinking()}
        items.append(Item(case, body, {"keys": keys}, lambda call, keys=keys: scorers.json_answer(call.content, keys)))
    ok = [x for x in r.batch(NAME, items) if x.call.ok]  # at once: scored, not timed
    keys_found = [x.scores["keys"] for x in ok]
    return {"valid": rate([x.scores["object"] for x in ok]),
            "keys": sum(keys_found) / len(keys_found) if keys_found else None, "unsupported": None,
            "cases": [c[0] for c in CASES]}
