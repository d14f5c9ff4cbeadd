"""The load `bench/serve_speed.py` puts on one server and what it reads back: prompts of exact token counts,
an async client streaming Chat Completions over SSE, each request's result, the per-level summaries
(percentiles, aggregate decode rate) and one side's whole run."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_peers import LONG_TOKENS, Server

MAX_TOKENS = 32
PROMPT_TOKENS = 256
WORDS = (  # noqa: SIM905
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "river stone garden window market paper music light voice table field summer winter bridge engine cloud "
    "orange silver quiet rapid gentle bright ancient modern simple narrow heavy empty golden hidden").split()


class Prompts:
    """Random-word texts of an exact token count under the checkpoint's own tokenizer; every text of a run
    starts with that run's nonce, so no prefix cache (RAM or disk) can have seen it."""

    def __init__(self, ckpt: Path, nonce: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.nonce = nonce

    def text(self, key: str, n_tokens: int) -> str:
        rng = random.Random(f"{self.nonce}/{key}")
        words = [f"run {self.nonce} {key}:"]
        while len(words) < n_tokens * 1.3:
            words.append(rng.choice(WORDS))
        ids = self.tok.encode(" ".join(words), add_special_tokens=False).ids[:n_tokens]
        return self.tok.decode(ids)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)


# ---------------------------------------------------------------------------------------------------------
# the client


@dataclass
class Result:
    sent: float
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    finish: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    max_tokens: int = MAX_TOKENS

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's usage where it sends one; else max_tokens when it stopped for length
        (exact), else the number of content chunks (llama-cpp-python streams about one per token)."""
        if self.usage and self.usage.get("completion_tokens") is not None:
            return int(self.usage["completion_tokens"])
        if self.finish == "length":
            return self.max_tokens
        return self.chunks

    @property
    def cache_hit(self) -> int | None:
        u = self.usage or {}
        if u.get("prompt_cache_hit_tokens") is not None:
            return int(u["prompt_cache_hit_tokens"])
        details = u.get("prompt_tokens_details") or {}
        return None if details.get("cached_tokens") is None else int(details["cached_tokens"])


class Client:
    def __init__(self, base: str, model: str) -> None:
        self.base, self.model = base, model

    def body(self, text: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
            # ours: DeepSeek's switch and vLLM's ignore_eos; llama-cpp-python ignores both (no ignore_eos
            # there: its finish reasons are reported, and a random-weight model rarely picks EOS)
            "ignore_eos": True, "thinking": {"type": "disabled"},
        }
        body.update(extra)
        return body

    async def one(self, http: Any, body: dict[str, Any]) -> Result:
        res = Result(sent=time.perf_counter(), max_tokens=body["max_tokens"])
        try:
            async with http.stream("POST", self.base + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    res.error = f"HTTP {r.status_code}: {(await r.aread()).decode('utf-8', 'replace')[:200]}"
                    return res
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments (keep-alive, ping) and blank lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if obj.get("usage"):
                        res.usage = obj["usage"]
                    for ch in obj.get("choices") or []:
                        d = ch.get("delta") or {}
                        piece = (d.get("content") or "") + (d.get("reasoning_content") or "")
                        if piece or d.get("tool_calls"):
                            now = time.perf_counter()
                            res.first = res.first or now
                            res.last = now
                            res.chunks += 1
                        res.finish = ch.get("finish_reason") or res.finish
        except Exception as e:  # noqa: BLE001 (a failed request is a result, reported with the rest)
            res.error = f"{type(e).__name__}: {e}"
        return res

    async def batch(self, bodies: list[dict[str, Any]], concurrency: int, timeout: float) -> tuple[list[Result], float]:
        """Run `bodies` with `concurrency` in flight (closed loop); returns the results and the start time."""
        import httpx

        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=10.0)) as http:

            async def go(b: dict[str, Any]) -> Result:
                async with sem:
                    return await self.one(http, b)

            t0 = time.perf_counter()
            tasks = [asyncio.ensure_future(go(b)) for b in bodies]
            try:
                _done, pending = await asyncio.wait(tasks, timeout=timeout)
                if pending:
                    raise asyncio.TimeoutError
                return [t.result() for t in tasks], t0
            finally:  # on a timeout or Ctrl-C: no request outlives the batch
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def single(self, body: dict[str, Any], timeout: float) -> Result:
        (r,), _t0 = await self.batch([body], 1, timeout)
        return r


def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize(results: list[Result], t0: float) -> dict[str, Any]:
    ok = [r for r in results if r.error is None and r.first is not None]
    toks = sum(r.tokens for r in ok)
    decoding = union_length([(r.first, r.last) for r in ok if r.last is not None])  # type: ignore[misc]
    after_first = sum(max(r.tokens - 1, 0) for r in ok)
    wall = max((r.last or r.first for r in ok), default=t0) - t0  # type: ignore[type-var]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return dict(
        n=len(results), ok=len(ok), tokens=toks, wall_s=wall,
        decode_tps=after_first / decoding if decoding > 0 else float("nan"),
        e2e_tps=toks / wall if wall > 0 else float("nan"),
        ttft_p50=percentile(ttfts, 0.5), ttft_p99=percentile(ttfts, 0.99),
        finishes=sorted({str(r.finish) for r in ok}), short=sum(1 for r in ok if r.tokens < r.max_tokens),
        errors=[r.error for r in results if r.error][:3],
    )


def fmt_level(s: dict[str, Any]) -> str:
    if "error" in s:
        return s["error"]
    return (f"decode {s['decode_tps']:.1f} tok/s, e2e {s['e2e_tps']:.1f} tok/s, TTFT p50 {s['ttft_p50']:.2f} s "
            f"p99 {s['ttft_p99']:.2f} s ({s['ok']}/{s['n']} ok, {s['tokens']} tokens)")


# ---------------------------------------------------------------------------------------------------------
# one server's measurements


async def measure(server: Server, ours: bool, prompts: Prompts, quick: bool, level_timeout: float) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=30.0) as http:
        models = (await http.get(server.base + "/v1/models")).json().get("data") or [{}]
    client = Client(server.base, models[0].get("id", "default"))
    side = "ours" if ours else "llama"
    out: dict[str, Any] = {"model_id": client.model, "levels": {}, "long": {}, "grammar": {}}

    # warm-up: page in the weights, first-use paths (not measured)
    await client.single(client.body(prompts.text("warmup", PROMPT_TOKENS), 8), level_timeout)

    per_level = {1: 2, 4: 4, 16: 16} if quick else {1: 8, 4: 16, 16: 32}
    for conc, n in per_level.items():
        bodies = [client.body(prompts.text(f"{side}-c{conc}-{i}", PROMPT_TOKENS), MAX_TOKENS) for i in range(n)]
        try:
            results, t0 = await client.batch(bodies, conc, level_timeout)
            out["levels"][conc] = summarize(results, t0)
        except asyncio.TimeoutError:
            out["levels"][conc] = {"error": f"over {level_timeout:.0f} s"}
        out["rss"] = max(out.get("rss", 0), server.rss_bytes())
        print(f"  {server.name} c={conc}: {fmt_level(out['levels'][conc])}", flush=True)

    # ~8K prompt: cold, repeated exactly, same document + a new question
    doc = prompts.text(f"{side}-doc", LONG_TOKENS - 32)
    q1 = prompts.text(f"{side}-q1", 24)
    q2 = prompts.text(f"{side}-q2", 24)
    cases = [("cold", f"{doc}\n\n{q1}"), ("repeat", f"{doc}\n\n{q1}"), ("new question", f"{doc}\n\n{q2}")]
    if quick:  # llama.cpp prefills 8K at ~100 tok/s here: each case costs it over a minute
        cases = cases[:2]
    for label, text in cases:
        offset = server.log_size()
        try:
            r = await client.single(client.body(text, 4), level_timeout)
        except asyncio.TimeoutError:
            out["long"][label] = {"error": f"over {level_timeout:.0f} s"}
            continue
        await asyncio.sleep(0.2)  # let the server's log lines for this request land
        claimed, found = (r.cache_hit, None) if ours else llama_claimed(server.log_since(offset))
        out["long"][label] = dict(ttft=r.ttft, error=r.error, prompt_tokens=(r.usage or {}).get("prompt_tokens"),
                                  claimed=claimed, found=found)
        out["rss"] = max(out.get("rss", 0), server.rss_bytes())
        print(f"  {server.name} 8K {label}: {out['long'][label]}", flush=True)
    out["long_tokens"] = prompts.count(cases[0][1])

    # the grammar's per-token overhead: one request at a time, plain and json_object alternating (so both see
    # the same machine), the median over requests of decode ms per token after the first
    n = 3 if quick else 6
    modes = {"plain": {}, "json_object": {"response_format": {"type": "json_object"}}}
    runs: dict[str, list[Result]] = {k: [] for k in modes}
    try:
        for i in range(n):
            for label, extra in modes.items():
                text = "Answer in JSON. " + prompts.text(f"{side}-g-{label}-{i}", PROMPT_TOKENS)
                runs[label].append(await client.single(client.body(text, MAX_TOKENS, **extra), level_timeout))
    except asyncio.TimeoutError:
        out["grammar"]["error"] = f"over {level_timeout:.0f} s"
    for label, results in runs.items():
        per = [1000 * (r.last - r.first) / (r.tokens - 1) for r in results  # type: ignore[operator]
               if r.error is None and r.first is not None and r.last is not None and r.tokens > 1]
        out["grammar"][label] = dict(ms_per_token=percentile(per, 0.5), tokens=[r.tokens for r in results],
                                     errors=[r.error for r in results if r.error][:2])
        print(f"  {server.name} grammar {label}: {out['grammar'][label]}", flush=True)
    return out


def llama_claimed(log: str) -> tuple[int | None, int | None]:
    """(tokens reused, tokens of matching prefix found) from llama-cpp-python's verbose log, its only report:
    'Llama.generate: N prefix-match hit, ...' or 'N prefix-match found but partial kv removal not supported,
    re-evaluating full prompt'."""
    hits = [int(m) for m in re.findall(r"(\d+) prefix-match hit", log)]
    found = [int(m) for m in re.findall(r"(\d+) prefix-match found but", log)]
    reused = max(hits) if hits else (0 if found or "cache miss" in log or "cache save" in log else None)
    return reused, max(hits + found) if hits or found else None


def run_side(name: str, make: Callable[[], Server], prompts: Prompts, quick: bool, start_timeout: float,
             level_timeout: float) -> dict[str, Any]:
    server = make()
    try:
        print(f"starting {name}: {' '.join(server.cmd)}", flush=True)
        server.start(start_timeout)
        print(f"  ready in {server.started_s:.1f} s (log: {server.log_path})", flush=True)
        res = asyncio.run(measure(server, name == "ours", prompts, quick, level_timeout))
        res["start_s"] = server.started_s
        found = re.search(r"kernels: ([^\n]+)", server.log_since(0)) if name == "ours" else None
        if found:
            res["kernels"] = found.group(1).strip()
        res["load"] = os.getloadavg()[0]
        return res
    except Exception as e:  # noqa: BLE001 (one side failing still reports the other)
        print(f"  {name} failed: {e}", flush=True)
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    finally:
        server.stop()
