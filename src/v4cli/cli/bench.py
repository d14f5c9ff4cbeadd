"""`v4 bench`: measure an endpoint (the local engine, or any OpenAI- or Anthropic-compatible URL) on speed,
recall, tool calls, JSON and cost; `v4 bench compare A.json B.json` puts two reports side by side."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import KeyOpt, app, console, handled, opt

if TYPE_CHECKING:
    from ..console import Console

bench_app = typer.Typer(no_args_is_help=False, add_completion=False, rich_markup_mode=None,
                        context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(bench_app, name="bench")

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20}


def parse_tokens(text: str, param: str) -> list[int]:
    """`2k,32k,1m` -> [2048, 32768, 1048576] (k and m are binary, as context windows are counted)."""
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)\s*([km]?)", part)
        if not m or int(m[1]) == 0:
            raise typer.BadParameter(f"{part!r} is not a token count like 512, 2k or 1m", param_hint=param)
        n = int(m[1]) * _UNITS[m[2]]
        if n < 128:
            raise typer.BadParameter(f"{part} is too short for a prompt (128 tokens at least)", param_hint=param)
        out.append(n)
    if not out:
        raise typer.BadParameter("give at least one length", param_hint=param)
    return sorted(set(out))


def parse_counts(text: str, param: str, *, top: int | None = None) -> list[int]:
    try:
        out = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of whole numbers like 1,4,16", param_hint=param) from None
    if not out or out[0] < (0 if top else 1) or (top is not None and out[-1] > top):
        limits = f"0 to {top}" if top is not None else "1 or more"
        raise typer.BadParameter(f"each value must be {limits}", param_hint=param)
    return out


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    suite: Annotated[str, opt("--suite", "-s", metavar="LIST", help="Suites to run, comma-separated: speed, "
                               "recall, tools, json, cost.")] = "speed,recall,tools,json,cost",
    model: Annotated[str | None, opt("--model", "-m", metavar="MODEL", help="Measure this local model through a "
                                      "`v4 serve` started on a free loopback port (default: V4_MODEL, else the "
                                      "first pulled, else tiny); with --url, the model name to ask for.")] = None,
    url: Annotated[str | None, opt("--url", metavar="URL", help="Measure this endpoint instead (v4 serve, DeepSeek's "
                                  "API, SGLang, vLLM): an OpenAI base URL, or an Anthropic one (see "
                                  "--format).")] = None,
    api_key: KeyOpt = None,
    fmt: Annotated[str | None, opt("--format", metavar="FORMAT", help="API format: openai (Chat Completions) or "
                                    "anthropic (Messages: POST .../v1/messages, x-api-key). Default: anthropic "
                                    "when the --url path ends in /anthropic, /anthropic/v1 or /v1/messages, "
                                    "else openai. With --model, the format the local server is measured "
                                    "in.")] = None,
    context: Annotated[str, opt("--context", "-c", metavar="LIST", help="Prompt lengths in tokens for speed and "
                                 "recall, e.g. 2k,32k,128k,1m.")] = "2k,32k",
    concurrency: Annotated[str, opt("--concurrency", metavar="LIST", help="Requests at once for speed, e.g. "
                                     "1,4,16.")] = "1,4",
    depths: Annotated[str, opt("--depths", metavar="LIST", help="Where recall hides its facts, in percent of the "
                                "prompt.")] = "0,25,50,75,100",
    file: Annotated[list[Path] | None, opt("--file", "-f", metavar="PATH", help="Build prompts from these files, "
                                            "folders or repositories (as `v4 ask` reads them; repeatable) instead "
                                            "of a generated text.")] = None,
    max_tokens: Annotated[int, opt("--max-tokens", min=2, metavar="N", help="Tokens decoded per speed "
                                    "request.")] = 64,
    answer_tokens: Annotated[int, opt("--answer-tokens", min=1, metavar="N", help="Budget of a recall, JSON or "
                                       "after-tool answer; a tool call gets 96 more.")] = 128,
    think: Annotated[bool, opt("--think/--no-think", help="Thinking mode for speed, recall and JSON (tool "
                                "scenarios choose their own).")] = False,
    think_tokens: Annotated[int, opt("--think-tokens", min=0, metavar="N", help="Extra budget for an answer "
                                      "that reasons first.")] = 2048,
    timeout: Annotated[float, opt("--timeout", min=0.1, metavar="SECONDS", help="Give up on a request after "
                                   "this long.")] = 600.0,
    json_out: Annotated[Path | None, opt("--json", metavar="FILE", help="Write the full report (every request's "
                                          "timings and scores, endpoint, versions, machine) as JSON.")] = None,
    plot: Annotated[Path | None, opt("--plot", metavar="FILE.png", help="Draw the speed curves and the recall "
                                      "grid into a PNG (needs matplotlib).")] = None,
    prices: Annotated[Path | None, opt("--prices", metavar="FILE", help="Price table (JSON, per million tokens: "
                                        "cache_hit, cache_miss, output per model) instead of DeepSeek's "
                                        "published prices.")] = None,
    seed: Annotated[int, opt("--seed", metavar="N", help="Seed for the prompts and facts.")] = 0,
) -> None:
    """Measure an endpoint on your own work: speed, long-range recall, tool calls, JSON output and cost.

    Speed: time to first token, prefill and decode tokens/s per context length and concurrency, cold
    and with the prefix cache warm (with the cache hits the endpoint reports). Recall: facts hidden at
    each depth of each length, asked for and scored exactly. Tools: single, parallel and chosen calls,
    unicode and nested arguments, a tool result round trip and a thinking-mode turn with
    reasoning_content sent back; scored for well-formed, schema-valid calls, the right tool and no
    markup in content. JSON: JSON mode, scored for parsing and keys. Cost: the tokens each suite used
    and their price. Every request that fails is reported and the run goes on; the exit status is 1
    unless every request succeeded. The anthropic format has no JSON mode: its json suite sends
    nothing and says so.

    Examples:

      v4 bench --model tiny --context 512,1k --concurrency 1,2

      v4 bench --url https://api.deepseek.com --api-key $KEY --model deepseek-v4-flash --json api.json

      v4 bench --url http://gpu-box:30000 --file src/ --suite recall --context 32k,128k --plot recall.png

      v4 bench --url https://api.deepseek.com/anthropic --api-key $KEY --suite speed,tools,cost

      v4 bench compare api.json local.json
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..bench import anthropic, cost, haystack, suites
    from ..bench.runner import Settings

    c = console()
    with handled(c):
        try:
            names = suites.parse(suite)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--suite") from None
        settings = Settings(names, parse_tokens(context, "--context"), parse_counts(concurrency, "--concurrency"),
                            [d / 100 for d in parse_counts(depths, "--depths", top=100)], max_tokens, answer_tokens,
                            think, think_tokens, seed)
        url = url if not url or "://" in url else f"http://{url}"  # host:port, as `v4 chat --url` reads it
        fmt = _format(fmt, url)
        table = cost.load_table(prices)
        if plot:
            from ..bench.chart import require_matplotlib

            require_matplotlib()  # before the run, not after it
        from ..chat_format import load_tokenizer

        tok = load_tokenizer()
        corpus = haystack.Corpus.from_files(tok, file) if file else haystack.Corpus.generated(tok, seed)
        if url:
            _measure(c, anthropic.client(url, fmt, api_key=api_key, model=model, timeout=timeout), corpus, settings,
                     table, {"url": url, "local": False, "served": None}, json_out, plot)
            return
        from ..backend import default_model
        from ..bench.local import LocalServer

        name = model or default_model()
        room = max(max_tokens, answer_tokens + think_tokens + 96)
        server = LocalServer(name, context=max(settings.contexts) + room + 512, max_batch=max(settings.concurrency))
        c.info(f"v4 bench: starting v4 serve --model {name} on a loopback port")
        with contextlib.ExitStack() as stack:
            with c.steps(f"loading {name}", None) as step:
                server.wait = lambda s: step(f"{s:.0f} s")
                local_url = stack.enter_context(server)
            _measure(c, anthropic.client(local_url, fmt, timeout=timeout), corpus, settings, table,
                     {"url": local_url, "local": True, "served": name}, json_out, plot)


def _format(fmt: str | None, url: str | None) -> str:
    """--format as given (checked), else the URL's rule; an OpenAI --format on a Messages URL is a mistake."""
    from ..bench.anthropic import FORMATS, is_messages_url

    messages = bool(url) and is_messages_url(url or "")
    if fmt is None:
        return "anthropic" if messages else "openai"
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not a format: choose openai or anthropic", param_hint="--format")
    if fmt == "openai" and messages:
        raise typer.BadParameter(f"{url} is an Anthropic Messages URL: use --format anthropic, or give the "
                                 "OpenAI base URL", param_hint="--format")
    return fmt


def _measure(c: Console, client: Any, corpus: Any, settings: Any, prices: dict[str, Any],
             endpoint: dict[str, Any], json_out: Path | None, plot: Path | None) -> None:
    """Run the suites with a bar each, write what was asked for, show the tables and charts; exit 1 when
    any request failed."""
    from ..bench import chart, report, suites

    model = client.resolve_model()
    c.info(f"measuring {model} at {client.url} in the {client.format} format ({corpus.source}, "
           f"{corpus.tokens:,} tokens)")
    bars = _Bars(c)
    try:
        rep = suites.execute(client, corpus, settings, prices, endpoint | {"model": model, "format": client.format},
                             on_suite=bars.suite, on_done=bars.done)
    finally:
        bars.close()
    if json_out:
        report.write(rep, json_out)
    show(c, rep)
    if plot:
        chart.plot(rep, plot)
        c.info(f"chart written to {plot}")
    else:
        for line in _charts(rep):
            c.print(line)
    if json_out:
        c.info(f"report written to {json_out}")
    if not rep["ok"]:
        c.error(f"{rep['failed']} of {len(rep['requests'])} requests failed (listed above)")
        raise typer.Exit(1)


class _Bars:
    """A progress bar per suite; the previous one goes when the next starts."""

    def __init__(self, c: Console) -> None:
        self.c, self.cm, self.step = c, None, None

    def suite(self, name: str, planned: int) -> None:
        self.close()
        self.cm = self.c.steps(name, planned)
        self.step = self.cm.__enter__()

    def done(self, rec: Any) -> None:
        if self.step is not None:
            self.step(f"{rec.case}: {'ok' if rec.call.ok else rec.call.error.kind}")

    def close(self) -> None:
        if self.cm is not None:
            self.cm.__exit__(None, None, None)
        self.cm = self.step = None


def _n(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def show(c: Console, rep: dict[str, Any]) -> None:
    """The tables: one per suite that ran, then every failed request."""
    from ..bench.chart import recall_rows
    from ..bench.report import tokens_label

    s = rep["summary"]
    if "speed" in s:
        c.print("speed", style="bold")
        c.table(["context", "conc", "phase", "ok", "prompt", "TTFT s", "prefill t/s", "decode t/s", "total t/s",
                 "cache hit", "speed-up"],
                [[tokens_label(x["context"]), str(x["concurrency"]), x["phase"], f"{x['ok']}/{x['requests']}",
                  _n(x["prompt_tokens"], 6), _n(x["ttft_s"]), _n(x["prefill_tps"]), _n(x["decode_tps"]),
                  _n(x["aggregate_tps"]), _pct(x["cache_hit_share"]),
                  "-" if x["speedup"] is None else f"{x['speedup']:.2f}x"] for x in s["speed"]["cells"]],
                right=range(3, 11))
    if "recall" in s:
        c.print(f"recall: {_pct(s['recall']['score'])} found (✓ found, · missed, ✗ failed)", style="bold")
        columns, rows = recall_rows(s["recall"])
        c.table(columns, rows, right=range(1, len(columns)))
    if "tools" in s:
        rates = s["tools"]["rates"]
        c.print("tools: " + ", ".join(f"{k.replace('_', ' ')} {_pct(v)}" for k, v in rates.items()), style="bold")
        keys = list(rates)
        c.table(["scenario", *keys], [[case, *("-" if sc.get(k) is None else "yes" if sc[k] else "NO" for k in keys)]
                                      for case, sc in s["tools"]["scenarios"].items()])
    if "json" in s and s["json"]["unsupported"]:
        c.print(f"json: {len(s['json']['cases'])} requests not sent: JSON mode is {s['json']['unsupported']}",
                style="bold")
    elif "json" in s:
        c.print(f"json: {_pct(s['json']['valid'])} valid objects, {_pct(s['json']['keys'])} of the keys asked for",
                style="bold")
    if "cost" in s:
        k = s["cost"]
        c.print(f"cost ({k['currency']}, {k['priced_as']} prices per {k['per_tokens']:,} tokens: hit "
                f"{k['prices']['cache_hit']:g}, miss {k['prices']['cache_miss']:g}, output {k['prices']['output']:g})",
                style="bold")
        if k["note"]:
            c.note(k["note"])
        rows = [[name, str(r["requests"]), f"{r['prompt_tokens']:,}", f"{r['cache_hit_tokens']:,}",
                 f"{r['completion_tokens']:,}", f"{r['price']:.6f}", f"{r['saved']:.6f}"]
                for name, r in [*k["suites"].items(), ("total", k["total"])]]
        c.table(["suite", "requests", "prompt", "cache hit", "output", "price", "saved by cache"], rows,
                right=range(1, 7))
    failed = [r for r in rep["requests"] if not r["ok"]]
    if failed:
        c.print(f"failed requests: {len(failed)}", style="bold red")
        c.table(["suite", "case", "error", "status", "message"],
                [[r["suite"], r["case"], r["error"]["kind"], str(r["error"]["status"] or "-"),
                  r["error"]["message"][:160]] for r in failed])


def _charts(rep: dict[str, Any]) -> list[str]:
    from ..bench.chart import SPEED_METRICS, speed_lines

    speed = rep["summary"].get("speed")
    out: list[str] = []
    for metric, title in SPEED_METRICS[:2] if speed else ():
        out += ["", *speed_lines(speed, metric, title)]
    return out


@bench_app.command()
def compare(
    a: Annotated[Path, typer.Argument(metavar="A.json", help="A report from `v4 bench --json`.")],
    b: Annotated[Path, typer.Argument(metavar="B.json", help="The report to set beside it.")],
    as_json: Annotated[bool, opt("--json", help="Machine-readable output.")] = False,
) -> None:
    """Compare two bench reports: each metric in both, B/A, and which is better.

    Examples:

      v4 bench compare deepseek-api.json local.json
    """
    from ..bench import report

    c = console()
    with handled(c):
        ra, rb = report.load(a), report.load(b)
        rows = report.compare(ra, rb)
        if as_json:
            c.json({"a": str(a), "b": str(b), "rows": rows})
            return
        for side, r in (("A", ra), ("B", rb)):
            e = r["endpoint"]
            c.info(f"{side}: {e['model']} at {e['url']} ({e['format']} format, {r['created']})")
        c.table(["metric", "A", "B", "B/A", "better"],
                [[r["metric"], _n(r["a"], 4), _n(r["b"], 4), "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                  r["better"] or "="] for r in rows], right=(1, 2, 3))
