"""`v4 bench` in the Anthropic Messages format: the format rule, the suites' bodies as Messages requests,
and every suite against the real `v4 serve --model tiny` (the session's shared server) at /anthropic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from benchkit import SMALL, bench
from v4cli.bench import report, tools
from v4cli.bench.anthropic import AnthropicClient, is_messages_url, messages_body, messages_url


def test_the_format_follows_the_url() -> None:
    for url in ("https://api.deepseek.com/anthropic", "https://api.deepseek.com/anthropic/", "host:8000/anthropic/v1",
                "http://127.0.0.1:8000/v1/messages", "http://gw/x/anthropic?key=1"):
        assert is_messages_url(url), url
    for url in ("https://api.deepseek.com", "http://127.0.0.1:8000/v1", "http://h/beta", "http://anthropic.example",
                "http://h/v1/chat/completions"):
        assert not is_messages_url(url), url
    assert messages_url("https://api.deepseek.com/anthropic") == "https://api.deepseek.com/anthropic/v1/messages"
    assert messages_url("http://h:1/v1/") == "http://h:1/v1/messages"
    assert messages_url("http://h:1/v1/messages") == "http://h:1/v1/messages"
    assert messages_url("http://h:1/anthropic", "models") == "http://h:1/anthropic/v1/models"


def test_bodies_become_messages_requests() -> None:
    calls = [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo", "days": 1, "units": "metric"}'},
             {"id": "c2", "name": "get_weather", "arguments": "not json"}]
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                         *tools._history(calls, "I should look both up."), {"role": "user", "content": "Thanks"}],
            "tools": [tools.WEATHER, tools.CALC], "tool_choice": "required", "max_tokens": 9, "temperature": 0,
            "thinking": {"type": "enabled"}, "stop": ["END"]}
    out = messages_body(body)
    assert out["system"] == "Be brief." and out["max_tokens"] == 9 and out["temperature"] == 0
    assert out["thinking"] == {"type": "enabled"} and out["stop_sequences"] == ["END"]
    user, assistant, results, last = out["messages"]
    assert user == {"role": "user", "content": "Weather?"} and last == {"role": "user", "content": "Thanks"}
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == ["thinking", "tool_use", "tool_use"]  # no empty text block
    assert assistant["content"][0]["thinking"] == "I should look both up."
    assert assistant["content"][1] == {"type": "tool_use", "id": "c1", "name": "get_weather",
                                       "input": {"city": "Oslo", "days": 1, "units": "metric"}}
    assert assistant["content"][2]["input"] == {}  # arguments that are not an object cannot go back as one
    assert results["role"] == "user" and [(b["type"], b["tool_use_id"]) for b in results["content"]] == \
        [("tool_result", "c1"), ("tool_result", "c2")]  # one user turn holds every result
    assert json.loads(results["content"][0]["content"])["city"] == "Lisbon"
    assert out["tools"] == [{"name": t["function"]["name"], "description": t["function"]["description"],
                             "input_schema": t["function"]["parameters"]} for t in (tools.WEATHER, tools.CALC)]
    assert out["tool_choice"] == {"type": "any"}
    for choice, want in ((tools._named("calculate"), {"type": "tool", "name": "calculate"}),
                         ("auto", {"type": "auto"}), ("none", {"type": "none"})):
        assert messages_body(body | {"tool_choice": choice})["tool_choice"] == want
    with pytest.raises(ValueError, match="not supported by the anthropic format"):
        messages_body(body | {"response_format": {"type": "json_object"}})
    with pytest.raises(ValueError, match="no Messages field for seed"):
        messages_body(body | {"seed": 1})


def test_the_bare_host_is_served_at_v1_messages(v4_server: Any) -> None:
    call = AnthropicClient(v4_server.url).chat({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                                "thinking": {"type": "disabled"}})
    assert call.ok, call.error
    assert call.usage.reported and call.usage.prompt_tokens > 0 and 0 < call.usage.completion_tokens <= 3
    assert 0 < call.ttft_s <= call.total_s and call.finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def live(v4_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    path = tmp_path_factory.mktemp("bench") / "anthropic.json"
    result = bench("--url", f"{v4_server.url}/anthropic", "--context", "256", "--concurrency", "1", "--depths", "50",
                   *SMALL, "--json", str(path))
    return result, json.loads(path.read_text())


def test_every_suite_in_the_anthropic_format(live: tuple[Any, dict[str, Any]]) -> None:
    result, rep = live
    failed = [(r["suite"], r["case"], r["error"]) for r in rep["requests"] if not r["ok"]]
    assert result.exit_code == 0 and not failed, (result.output, failed)
    assert report.problems(rep) == []
    assert rep["endpoint"]["format"] == "anthropic" and rep["endpoint"]["url"].endswith("/anthropic")
    assert rep["settings"]["suites"] == ["speed", "recall", "tools", "json", "cost"]
    assert {r["suite"] for r in rep["requests"]} == {"speed", "recall", "tools", "cost"}  # json sends nothing
    assert rep["endpoint"]["system_fingerprints"] == []  # Messages has none
    for r in rep["requests"]:  # timings: positive and consistent; usage from message_start and message_delta
        assert r["total_s"] > 0 and r["started_s"] >= 0
        assert r["ttft_s"] is not None and 0 < r["ttft_s"] <= r["total_s"], r
        assert r["usage"]["reported"] and r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length", "tool_calls"), r
    s = rep["summary"]
    cells = {(c["concurrency"], c["phase"]): c for c in s["speed"]["cells"]}
    assert set(cells) == {(1, "cold"), (1, "warm")}
    for c in cells.values():
        assert c["ok"] == c["requests"] == 1 and c["ttft_s"] > 0 and c["decode_tps"] > 0
        assert 200 <= c["prompt_tokens"] <= 256  # input_tokens + cache_read_input_tokens: the whole prompt
    # cache hits from cache_read_input_tokens: none cold, nearly all of the prompt warm
    assert cells[(1, "cold")]["cache_hit_share"] < 0.2 < 0.8 < cells[(1, "warm")]["cache_hit_share"]
    assert s["cost"]["suites"]["cost"]["cache_hit_tokens"] > 0
    rates = s["tools"]["rates"]
    assert rates["well_formed"] == rates["schema_valid"] == rates["no_leak"] == 1.0
    forced = {case for case, *_ in tools.SCENARIOS}  # tool_choice any or tool: constrained by the server
    assert all(s["tools"]["scenarios"][case]["called"] for case in forced - {"parallel"})
    assert s["tools"]["scenarios"]["single"]["right_tool"] and s["tools"]["scenarios"]["arguments"]["right_tool"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (tools.WEATHER, tools.SEARCH, tools.CALC,
                                                                              tools.NOTE)}
    made = [c for r in rep["requests"] if r["suite"] == "tools" for c in r["tool_calls"]]
    assert len(made) >= 3
    for call in made:  # tool_use blocks as {id, name, arguments}; checked again without the bench's scorer
        assert call["id"] and call["name"] in schemas
        jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])
    assert s["json"] == {"valid": None, "keys": None, "cases": ["flat", "nested", "extract"],
                         "unsupported": s["json"]["unsupported"]}
    assert s["json"]["unsupported"].startswith("not supported by the anthropic format")
    assert "not supported by the anthropic format" in result.stdout and "in the anthropic format" in result.output
    assert s["recall"]["grid"]["scores"][0][0] in (0.0, 1.0)


def test_compare_across_formats(live: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    _, rep = live
    openai = json.loads(json.dumps(rep))
    openai["endpoint"]["format"] = "openai"
    openai["summary"]["json"] |= {"valid": 1.0, "keys": 1.0, "unsupported": None}
    (tmp_path / "a.json").write_text(json.dumps(openai))
    (tmp_path / "b.json").write_text(json.dumps(rep))
    r = bench("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json")
    assert r.exit_code == 0, r.output
    rows = {x["metric"]: x for x in json.loads(r.stdout)["rows"]}
    assert rows["json valid"] == {"metric": "json valid", "a": 1.0, "b": None, "ratio": None, "better": None}
    assert rows["speed decode_tps 256 x1 cold"]["ratio"] == pytest.approx(1.0)
    r = bench("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert "(openai format" in r.output and "(anthropic format" in r.output
