"""What every request passes before a handler: the API key, the body-size limit, and the counting
behind /metrics (Prometheus text, from prometheus-client)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .errors import ApiError

Scope = dict[str, Any]
ROUTES = ("/chat/completions", "/completions", "/models", "/messages/count_tokens", "/messages", "/health",
          "/metrics")


def route(path: str) -> str:
    """A bounded label for a path: its known endpoint (aliases folded), else "other"."""
    return next((r for r in ROUTES if path.endswith(r)), "other")


class _LoopCollector:
    """Engine-loop figures read at scrape time."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def collect(self) -> Any:
        loop = getattr(self.backend, "loop", None)
        s = loop.stats if loop is not None else None
        g = lambda name, doc, value: GaugeMetricFamily(f"v4_{name}", doc, value=float(value))  # noqa: E731
        c = lambda name, doc, value: CounterMetricFamily(f"v4_{name}", doc, value=float(value))  # noqa: E731
        yield g("queue_depth", "Requests waiting for a decode slot", s.waiting if s else 0)
        yield g("running_requests", "Requests being prefilled or decoded", loop.running if loop else 0)
        yield c("prompt_tokens", "Prompt tokens of admitted requests", s.prompt_tokens if s else 0)
        yield c("cached_prompt_tokens", "Prompt tokens restored from the prefix cache", s.cached_tokens if s else 0)
        yield c("generated_tokens", "Tokens generated", s.generated_tokens if s else 0)
        yield g("prefill_tokens_per_second", "Prompt tokens read per second in the last step that read any",
                s.prefill_tokens_per_s if s else 0)
        yield g("decode_tokens_per_second", "Tokens generated per second in the last step that made any",
                s.decode_tokens_per_s if s else 0)
        ratio = s.cached_tokens / s.prompt_tokens if s and s.prompt_tokens else 0.0
        yield g("cache_hit_ratio", "Share of prompt tokens served from the prefix cache", ratio)
        fam = CounterMetricFamily("v4_finished_requests", "Requests finished, by finish reason", labels=["reason"])
        for reason, n in sorted((s.finished if s else {}).items()):
            fam.add_metric([reason], float(n))
        yield fam


class Metrics:
    def __init__(self, backend: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("v4_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("v4_internal_errors", "Requests that hit a server bug", registry=self.registry)
        self.registry.register(_LoopCollector(backend))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _error(e: ApiError, path: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps(e.body(path)).encode()
    return {"type": "http.response.start", "status": e.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}, body


class Guard:
    """ASGI middleware: API key (Bearer or x-api-key, compared in constant time) on every path but
    `open_paths`; bodies over `max_bytes` refused with 413; each response counted by route and status."""

    def __init__(self, app: Any, *, api_key: str | None, max_bytes: int, metrics: Metrics,
                 open_paths: tuple[str, ...] = ()) -> None:
        self.app, self.key, self.max_bytes, self.metrics = app, api_key, max_bytes, metrics
        self.open_paths = open_paths

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get(b"x-api-key", b"").decode("latin-1")
        return hmac.compare_digest(token.encode(), self.key.encode()) if token else False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        label = route(scope["path"])

        async def counted(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.requests.labels(label, str(msg["status"])).inc()
            await send(msg)

        headers = dict(scope.get("headers") or [])
        if self.key and scope["path"] not in self.open_paths and scope["method"] != "OPTIONS" \
                and not self._authorized(headers):
            start, body = _error(ApiError(401, "Authentication Fails: the API key is missing or wrong (send it as "
                                          "'Authorization: Bearer KEY' or 'x-api-key: KEY')", None,
                                          "invalid_api_key"), scope["path"])
            await counted(start)
            return await send({"type": "http.response.body", "body": body})
        length = headers.get(b"content-length")
        too_big = length is not None and length.isdigit() and int(length) > self.max_bytes
        if not too_big and length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            chunks, size, more = [], 0, True
            while more and size <= self.max_bytes:  # a chunked body: read it whole (up to the limit) first
                msg = await receive()
                if msg["type"] != "http.request":
                    return
                chunks.append(msg.get("body", b""))
                size += len(chunks[-1])
                more = msg.get("more_body", False)
            too_big = size > self.max_bytes
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replayed() -> dict[str, Any]:
                return replay.pop() if replay else await receive()

            receive = replayed
        if too_big:
            start, body = _error(ApiError(413, f"the request body is over the server's limit of {self.max_bytes:,} "
                                          "bytes (v4 serve --max-request-bytes)", None, "request_too_large"),
                                 scope["path"])
            await counted(start)
            return await send({"type": "http.response.body", "body": body})
        await self.app(scope, receive, counted)
