"""`v4 bench`: the scorers on recorded answers, needle placement, every suite against a real
`v4 serve --model tiny` on a loopback port, and an endpoint that misbehaves on purpose in either format
(benchkit.py: 401, 429, 500, a cut stream, a stall, endless keep-alives). The Anthropic format against
the same server is test_bench_anthropic.py; the PNG chart, test_bench_plot.py."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from benchkit import SMALL, Misbehaving, bench
from v4cli.bench import cost, haystack, report, scorers, tools
from v4cli.bench.anthropic import AnthropicClient
from v4cli.bench.client import Client
from v4cli.chat_format import load_tokenizer
from v4cli.errors import UserError


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer()


# ---- scorers, on recorded answers ----------------------------------------------------------------------------
def test_recall_is_exact() -> None:
    assert scorers.recall("The access code is 482913.", "482913") == 1.0
    assert scorers.recall("482913", "482913") == 1.0
    assert scorers.recall("code: **482913**", "482913") == 1.0
    assert scorers.recall("It is 482914.", "482913") == 0.0  # a near miss: one digit off
    assert scorers.recall("4829130", "482913") == 0.0  # inside a longer number
    assert scorers.recall("I could not find an access code in the text.", "482913") == 0.0
    with pytest.raises(ValueError):
        scorers.recall("anything", "")


def test_tool_call_scores() -> None:
    good = {"id": "c1", "name": "get_weather", "arguments": '{"city": "Lisbon", "days": 3, "units": "metric"}'}
    s = scorers.tool_calls([good], "", [tools.WEATHER], expect="get_weather")
    assert s == {"called": True, "no_leak": True, "right_tool": True, "well_formed": True, "schema_valid": True}
    s = scorers.tool_calls([good], "", [tools.WEATHER, tools.CALC], expect="calculate")  # the wrong tool
    assert s["right_tool"] is False and s["schema_valid"] is True
    for args in ('{"city": "Lisbon", "days": "3", "units": "metric"}',  # a string for an integer
                 '{"city": "Lisbon", "days": 3}',  # a required key missing
                 '{"city": "Lisbon", "days": 3, "units": "kelvin"}',  # outside the enum
                 '{"city": "Lisbon", "days": 3, "units": "metric", "x": 1}'):  # additionalProperties: false
        s = scorers.tool_calls([good | {"arguments": args}], "", [tools.WEATHER], expect="get_weather")
        assert s["well_formed"] is True and s["schema_valid"] is False, args
    s = scorers.tool_calls([good | {"arguments": '{"city": "Lis'}], "", [tools.WEATHER])  # not JSON
    assert s["well_formed"] is False and s["schema_valid"] is False
    s = scorers.tool_calls([good | {"name": "get_wether"}], "", [tools.WEATHER])  # a tool that does not exist
    assert s["well_formed"] is True and s["schema_valid"] is False
    leaked = 'Sure.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">'
    assert scorers.tool_calls([], leaked, [tools.WEATHER])["no_leak"] is False
    assert scorers.tool_calls([], "< | DSML | tool_calls", [tools.WEATHER])["no_leak"] is False
    assert scorers.tool_calls([good], "", [tools.WEATHER], reasoning="</｜DSML｜invoke>")["no_leak"] is False
    s = scorers.tool_calls([], "It will be sunny.", [tools.WEATHER], expect="get_weather")
    assert s == {"called": False, "no_leak": True, "right_tool": False, "well_formed": None, "schema_valid": None}
    assert scorers.tool_calls([good], "", [tools.WEATHER], min_calls=2)["called"] is False


def test_json_scores() -> None:
    assert scorers.json_answer('{"name": "Lyon", "country": "France"}', ["name", "country", "population"]) == \
        {"parses": True, "object": True, "keys": pytest.approx(2 / 3)}
    assert scorers.json_answer('{"name": "Lyon"', ["name"]) == {"parses": False, "object": False, "keys": 0.0}
    assert scorers.json_answer("[1, 2]", ["name"]) == {"parses": True, "object": False, "keys": 0.0}
    assert scorers.json_answer("", ["name"])["parses"] is False


# ---- prompts and needles -----------------------------------------------------------------------------------
def _needle_index(tok: Any, text: str, line: str) -> tuple[int, int]:
    """(tokens before the needle, tokens of the haystack without it), counted directly."""
    before = len(tok.encode(text[: text.index(line)], add_special_tokens=False).ids)
    return before, len(tok.encode(text.replace(line, "", 1), add_special_tokens=False).ids)


@pytest.mark.parametrize("source", ["generated", "files"])
def test_needles_sit_at_the_requested_depth(tok: Any, tmp_path: Path, source: str) -> None:
    if source == "files":
        (tmp_path / "notes.md").write_text("".join(f"Note {i}: the quick brown fox jumps over the lazy dog.\n"
                                                   for i in range(80)))
        (tmp_path / "code.py").write_text("def f(x):\n    return x + 1\n" * 30)
        corpus = haystack.Corpus.from_files(tok, [tmp_path])
        assert corpus.source.startswith("2 file(s)") and '<file path="' in "".join(corpus.lines)
    else:
        corpus = haystack.Corpus.generated(tok, seed=3)
    n = haystack.needle(random.Random(1))
    for size in (256, 1000, 4096):  # 4096 is longer than the files: the corpus wraps round
        filler = corpus.text(size, start=7)
        longest = max(corpus.counts)
        assert size - longest - 2 <= corpus.count(filler) <= size
        for depth in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            text = haystack.place(tok, filler, depth, n.line)
            before, total = _needle_index(tok, text, n.line)
            # the needle goes at a line start, so it is off by at most one line of tokens
            assert abs(before - depth * total) <= longest + 1, (size, depth, before, total)
            assert haystack.depth_of(tok, text, n.line) == pytest.approx(before / total, abs=2 / total)
    with pytest.raises(ValueError):
        haystack.place(tok, "x\n", 1.5, n.line)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nothing to read"):
        haystack.Corpus.from_files(tok, [tmp_path / "empty"])


# ---- against v4 serve --model tiny -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(v4_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    result = bench("--url", v4_server.url, "--context", "256", "--concurrency", "1,2", "--depths", "0,50,100",
                   *SMALL, "--json", str(path))
    return result, json.loads(path.read_text()), path


def test_every_suite_against_tiny(live: tuple[Any, dict[str, Any], Path]) -> None:
    result, rep, _ = live
    failed = [(r["suite"], r["case"], r["error"]) for r in rep["requests"] if not r["ok"]]
    assert result.exit_code == 0 and not failed, (result.output, failed)
    assert report.problems(rep) == []
    assert rep["ok"] and rep["endpoint"]["model"] and rep["settings"]["suites"] == ["speed", "recall", "tools",
                                                                                  "json", "cost"]
    assert rep["endpoint"]["system_fingerprints"][0].startswith("fp_v4cli")
    assert {r["suite"] for r in rep["requests"]} == {"speed", "recall", "tools", "json", "cost"}
    for r in rep["requests"]:  # timings: positive and consistent
        assert r["total_s"] > 0 and r["started_s"] >= 0
        assert r["ttft_s"] is not None and 0 < r["ttft_s"] <= r["total_s"], r
        assert r["usage"]["reported"] and r["usage"]["prompt_tokens"] > 0
    s = rep["summary"]
    cells = {(c["concurrency"], c["phase"]): c for c in s["speed"]["cells"]}
    assert set(cells) == {(1, "cold"), (1, "warm"), (2, "cold"), (2, "warm")}
    for c in cells.values():
        assert c["ok"] == c["requests"] == c["concurrency"]
        assert c["ttft_s"] > 0 and c["prefill_tps"] > 0 and c["decode_tps"] > 0 and c["aggregate_tps"] > 0
        assert 200 <= c["prompt_tokens"] <= 256  # the endpoint's count of a prompt sized to 256
    assert cells[(1, "cold")]["cache_hit_share"] < 0.2 < 0.8 < cells[(1, "warm")]["cache_hit_share"]
    assert cells[(1, "warm")]["speedup"] > 0
    assert s["json"]["valid"] == 1.0 and s["json"]["unsupported"] is None  # grammar-constrained
    assert rep["endpoint"]["format"] == "openai"
    rates = s["tools"]["rates"]
    assert rates["well_formed"] == rates["schema_valid"] == rates["no_leak"] == 1.0
    forced = {case for case, _, _, choice, _, _ in tools.SCENARIOS}
    assert all(s["tools"]["scenarios"][case]["called"] for case in forced - {"parallel"})
    assert set(s["tools"]["scenarios"]) == forced | {"round_trip", "reasoning_round_trip"}
    for r in rep["requests"]:  # checked again here, without the bench's scorer
        if r["suite"] == "tools":
            for call in r["tool_calls"]:
                schema = next(t["function"]["parameters"] for t in (tools.WEATHER, tools.SEARCH, tools.CALC, tools.NOTE)
                              if t["function"]["name"] == call["name"])
                jsonschema.validate(json.loads(call["arguments"]), schema)
    g = s["recall"]["grid"]
    assert g["depths"] == [0.0, 0.5, 1.0] and g["contexts"] == [256] and len(g["scores"]) == 3
    for r in (r for r in rep["requests"] if r["suite"] == "recall"):
        assert abs(r["tags"]["depth_measured"] - r["tags"]["depth"]) < 0.1
        assert r["scores"]["recall"] == scorers.recall(r["content"], r["tags"]["fact"])
    total = s["cost"]["total"]
    assert total["requests"] == len(rep["requests"])
    assert total["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in rep["requests"])
    p = s["cost"]["prices"]
    assert total["price"] == pytest.approx((total["cache_hit_tokens"] * p["cache_hit"] + total["cache_miss_tokens"]
                                            * p["cache_miss"] + total["completion_tokens"] * p["output"]) / 1e6)
    assert s["cost"]["suites"]["cost"]["cache_hit_tokens"] > 0  # its second request reused the first's prefix
    out = result.stdout
    assert "decode tokens/s per request" in out and "time to first token" in out and "depth" in out


def test_compare_reports(live: tuple[Any, dict[str, Any], Path], tmp_path: Path) -> None:
    _, rep, path = live
    faster = json.loads(json.dumps(rep))
    for c in faster["summary"]["speed"]["cells"]:
        c["decode_tps"] *= 2
        c["ttft_s"] /= 2
    (tmp_path / "b.json").write_text(json.dumps(faster))
    r = bench("compare", str(path), str(tmp_path / "b.json"), "--json")
    assert r.exit_code == 0, r.output
    rows = {x["metric"]: x for x in json.loads(r.stdout)["rows"]}
    decode = rows["speed decode_tps 256 x1 cold"]
    assert decode["ratio"] == pytest.approx(2.0) and decode["better"] == "B"
    ttft = rows["speed ttft_s 256 x2 warm"]
    assert ttft["ratio"] == pytest.approx(0.5) and ttft["better"] == "B"  # lower is better
    assert rows["json valid"]["ratio"] == 1.0 and rows["json valid"]["better"] is None
    r = bench("compare", str(path), str(tmp_path / "b.json"))
    assert r.exit_code == 0 and "B/A" in r.stdout and "speed decode_tps 256 x1 cold" in r.stdout
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    r = bench("compare", str(path), str(tmp_path / "bad.json"))
    assert r.exit_code == 1 and "not a v4 bench report" in r.output
    r = bench("compare", str(path), str(tmp_path / "missing.json"))
    assert r.exit_code == 1 and "no such report" in r.output


# ---- an endpoint that misbehaves ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_failures_are_reported_per_request_and_the_run_goes_on(tmp_path: Path, fmt: str) -> None:
    plan = ["ok", 401, 429, 500, "cut", "stall", "keepalive"]  # the speed suite's warm-up request first
    out = tmp_path / "fail.json"
    with Misbehaving(plan) as fake:
        url = fake.url + ("/anthropic" if fmt == "anthropic" else "")  # the format follows from the URL
        t0 = time.monotonic()
        r = bench("--url", url, "--api-key", "k", "--suite", "speed", "--context", "128,256,512,1k",
                  "--concurrency", "1", "--timeout", "1", *SMALL, "--json", str(out))
        elapsed = time.monotonic() - t0
        assert fake.seen == 9  # every request was made, whatever happened to the ones before
    assert r.exit_code == 1 and "6 of 9 requests failed" in r.output, r.output
    assert elapsed < 30
    paths = {path for path, _ in fake.requests}
    headers = fake.requests[0][1]
    if fmt == "anthropic":
        assert paths == {"/anthropic/v1/messages"} and headers["x-api-key"] == "k"
        assert headers["anthropic-version"] == "2023-06-01" and "authorization" not in headers
    else:
        assert paths == {"/v1/chat/completions"} and headers["authorization"] == "Bearer k"
    rep = json.loads(out.read_text())
    assert report.problems(rep) == [] and rep["ok"] is False and rep["failed"] == 6
    assert rep["endpoint"]["format"] == fmt
    errors = [(x["error"] or {}).get("kind") for x in rep["requests"]]
    statuses = [(x["error"] or {}).get("status") for x in rep["requests"]]
    assert errors == [None, "http", "http", "http", "cut", "timeout", "timeout", None, None]
    assert statuses[1:4] == [401, 429, 500]
    first = rep["requests"][1]["error"]["message"]  # the message inside either format's error body
    assert "fake 401" in first and "--api-key" in first and "authentication_error" not in first
    assert "before " + ("message_stop" if fmt == "anthropic" else "[DONE]") in rep["requests"][4]["error"]["message"]
    ok = rep["requests"][-1]
    assert ok["ok"] and ok["content"] == '{"name": "Lyon"}' and 0 < ok["ttft_s"] <= ok["total_s"]
    assert ok["finish_reason"] == "stop"
    assert ok["usage"] == {"prompt_tokens": 100, "completion_tokens": 5, "cached_tokens": 64, "reasoning_tokens": 0,
                           "reported": True}
    assert "failed requests: 6" in r.stdout and "timeout" in r.stdout


def test_refused_and_all_good(tmp_path: Path) -> None:
    from v4cli.bench.local import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = bench("--url", url, "--suite", "json", *SMALL, "--json", str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert r.exit_code == 1 and {x["error"]["kind"] for x in rep["requests"]} == {"refused"}
    assert Client(url).chat({"messages": []}).error.kind == "refused"
    assert AnthropicClient(url).chat({"messages": [], "max_tokens": 1}).error.kind == "refused"
    with Misbehaving([]) as fake:
        r = bench("--url", fake.url, "--suite", "json,cost", "--context", "256", *SMALL, "--json",
                  str(tmp_path / "ok.json"), "--prices", str(_prices(tmp_path)))
        assert r.exit_code == 0, r.output
        rep = json.loads((tmp_path / "ok.json").read_text())
        # {"name": ...} has 1 of the 3 keys of the first case and none of the others'
        assert rep["summary"]["json"]["valid"] == 1.0 and rep["summary"]["json"]["keys"] == pytest.approx(1 / 9)
        k = rep["summary"]["cost"]
        assert k["priced_as"] == "mine" and "priced as mine" in k["note"]
        # 5 requests of 64 hit, 36 miss and 5 output tokens at 1, 10 and 100 per million
        assert k["total"]["price"] == pytest.approx(5 * (64 * 1 + 36 * 10 + 5 * 100) / 1e6)
        assert k["total"]["saved"] == pytest.approx(5 * 64 * (10 - 1) / 1e6)
        r = bench("--url", fake.url, "--suite", "speed", "--context", "256", "--concurrency", "1", *SMALL,
                  "--plot", str(tmp_path / "c.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.exit_code == 1 and "needs matplotlib" in r.output and fake.seen == 5  # refused before the run
    else:
        assert r.exit_code == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def _prices(tmp_path: Path) -> Path:
    p = tmp_path / "prices.json"
    p.write_text(json.dumps({"models": {"mine": {"cache_hit": 1, "cache_miss": 10, "output": 100}}}))
    return p


def test_price_table(tmp_path: Path) -> None:
    table = cost.load_table()
    flash, note = cost.prices_for("deepseek-chat", table)
    assert (flash.model, flash.cache_hit, flash.cache_miss, flash.output, note) == \
        ("deepseek-v4-flash", 0.028, 0.14, 0.28, "")
    pro, _ = cost.prices_for("deepseek-v4-pro", table)
    assert pro.output == 0.87 and "pricing" in pro.source
    assert cost.prices_for("tiny", table)[1] == "'tiny' is not in the price table: priced as deepseek-v4-flash"
    bad = tmp_path / "bad.json"
    for text, msg in (("{", "is not JSON"), ('{"models": {}}', 'needs "models"'),
                      ('{"models": {"m": {"cache_hit": 1, "output": -1}}}', "cache_miss, output")):
        bad.write_text(text)
        with pytest.raises(UserError, match=msg):
            cost.load_table(bad)
    r = bench("--url", "http://127.0.0.1:1", "--prices", str(tmp_path / "none.json"))
    assert r.exit_code == 1 and "no such price file" in r.output


def test_bad_options() -> None:
    for args, msg in ((["--suite", "speed,nope"], "unknown suite nope"), (["--context", "2q"], "not a token count"),
                      (["--context", "64"], "too short"), (["--depths", "0,150"], "0 to 100"),
                      (["--concurrency", "0"], "1 or more"), (["--format", "grpc"], "not a format"),
                      (["--format", "openai", "--url", "http://127.0.0.1:1/v1/messages"], "Anthropic Messages URL")):
        r = bench("--url", "http://127.0.0.1:1", *args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_local_model(serve_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--model: a `v4 serve` child on a free port, measured as a client; it is gone afterwards."""
    monkeypatch.setenv("V4_HOME", str(serve_home))
    r = bench("--model", "tiny", "--suite", "json", *SMALL, "--json", str(tmp_path / "l.json"))
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "l.json").read_text())
    assert rep["endpoint"]["local"] and rep["endpoint"]["served"] == "tiny" and rep["summary"]["json"]["valid"] == 1
    assert Client(rep["endpoint"]["url"], timeout=2).chat({"messages": []}).error.kind == "refused"
