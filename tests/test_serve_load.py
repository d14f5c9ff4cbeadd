"""`v4 serve` under load: batch-invariant greedy streams, disconnects, the queue limit, keep-alives."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from v4server import V4Server, words


def _stream_tokens(client: openai.OpenAI, content: str, user: str, max_tokens: int = 16) -> str:
    chunks = client.chat.completions.create(
        model="deepseek-chat", messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        temperature=0, stream=True, user=user)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sixteen_concurrent_greedy_streams_equal_each_alone(v4_server: Any) -> None:
    """Batch invariance with the server's defaults (C++ kernels, rounding simulation on): prompts of
    different lengths, some over one prefill chunk, all decoded together, each equal to itself alone."""
    client = openai.OpenAI(base_url=f"{v4_server.url}/v1", api_key="x", max_retries=0, timeout=300)
    prompts = [words(n, seed=i) for i, n in enumerate([12, 600, 40, 150, 700, 90, 5, 530, 130, 33, 200, 75,
                                                       64, 205, 18, 100])]
    alone = [_stream_tokens(client, p, user=f"alone-{i}") for i, p in enumerate(prompts)]  # separate cache keys
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda ip: _stream_tokens(client, ip[1], user=f"together-{ip[0]}"),
                                 enumerate(prompts)))
    diff = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
    assert not diff, f"requests {diff} changed when batched: {[(alone[i], together[i]) for i in diff[:2]]}"
    assert len(set(alone)) > 8  # distinct prompts, distinct answers: the comparison means something


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _open_stream(url: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


@pytest.fixture(scope="module")
def one_slot(serve_home: Path) -> Any:
    """A server with one decode slot and room for one waiting request."""
    with V4Server(serve_home, "--max-batch", "1", "--max-queue", "1", "--keepalive", "0.3") as srv:
        yield srv


def _read_until(resp: Any, done: Any) -> bytes:
    """Read a stream until `done(bytes so far)`; the stream ending first fails the test instead of spinning."""
    got = b""
    while not done(got):
        chunk = resp.read1(4096)
        assert chunk, f"the stream ended before it was expected to: {got[-300:]!r}"
        got += chunk
    return got


def test_disconnect_frees_the_slot_at_once(one_slot: Any) -> None:
    url = one_slot.url
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 3000,
            "stream": True, "temperature": 0}  # greedy: the built-in model never ends its turn early
    conn, resp = _open_stream(url, body)
    assert resp.status == 200
    _read_until(resp, lambda got: got.count(b"data:") >= 4)  # a few tokens in, then the client goes away
    aborted = _metric(url, 'v4_finished_requests_total{reason="abort"}')
    conn.close()
    deadline = time.monotonic() + 20  # far less than the 3000 tokens it was asked for
    while _metric(url, "v4_running_requests") != 0 or \
            _metric(url, 'v4_finished_requests_total{reason="abort"}') != aborted + 1:
        assert time.monotonic() < deadline, "the disconnected request still runs"
        time.sleep(0.1)
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(
        {"model": "deepseek-chat", "messages": [{"role": "user", "content": "next"}], "max_tokens": 3,
         "temperature": 0}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["usage"]["completion_tokens"] == 3


def test_queue_limit_429_keepalive_while_queued_and_health(one_slot: Any) -> None:
    url = one_slot.url
    health: list[int | None] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            health.append(one_slot.health())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Greedy: sampled, the built-in model may end its turn and free the slot before the checks below.
        long = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "a"}], "max_tokens": 3000,
                "stream": True, "temperature": 0}
        c1, running = _open_stream(url, long)
        # Past the role chunk: it is decoding, so it holds the slot.
        _read_until(running, lambda seen: seen.count(b"data:") >= 3)
        c2, queued = _open_stream(url, {**long, "max_tokens": 2})
        assert queued.status == 200
        # It waits for the slot: comments keep the connection alive.
        first = _read_until(queued, lambda got: b": keep-alive" in got)
        status, err = _post(url, {**long, "stream": False, "max_tokens": 2})
        assert status == 429 and err["error"]["type"] == "rate_limit_error"
        c1.close()  # frees the slot: the queued request runs to the end
        rest = first + queued.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        c2.close()
    finally:
        stop.set()
        watcher.join()
    assert health and all(h == 200 for h in health)


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_key_and_metrics(serve_home: Path) -> None:
    with V4Server(serve_home, "--api-key", "s3cret", "--max-request-bytes", "4096", "--cors",
                  "http://app.test") as srv:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        status, err = _post(srv.url, body)
        assert status == 401 and err["error"]["type"] == "authentication_error"
        ok = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="s3cret", max_retries=0)
        assert ok.chat.completions.create(**body).usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()
        req = urllib.request.Request(f"{srv.url}/v1/models", headers={"x-api-key": "s3cret"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        assert srv.health() == 200  # health needs no key
        big = {**body, "messages": [{"role": "user", "content": "x" * 5000}]}
        req = urllib.request.Request(f"{srv.url}/v1/chat/completions", json.dumps(big).encode(),
                                     {"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 413 and "4,096" in json.loads(e.value.read())["error"]["message"]
        pre = urllib.request.Request(f"{srv.url}/v1/chat/completions", method="OPTIONS", headers={
            "Origin": "http://app.test", "Access-Control-Request-Method": "POST"})
        with urllib.request.urlopen(pre, timeout=10) as r:
            assert r.headers["access-control-allow-origin"] == "http://app.test"
        req = urllib.request.Request(f"{srv.url}/metrics", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        assert 'v4_requests_total{route="/chat/completions",status="401"} 1.0' in text
        assert 'v4_requests_total{route="/chat/completions",status="200"} 1.0' in text
        assert re.search(r"^v4_generated_tokens_total 2\.0$", text, re.M)
        for name in ("v4_queue_depth", "v4_running_requests", "v4_prefill_tokens_per_second",
                     "v4_decode_tokens_per_second", "v4_cache_hit_ratio", "v4_prompt_tokens_total"):
            assert re.search(rf"^{name} ", text, re.M), name
