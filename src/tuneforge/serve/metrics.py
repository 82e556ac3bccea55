"""Prometheus metrics for ``GET /metrics``, in a registry of their own (one per app, so tests and
several apps in one process never share counters)."""

from __future__ import annotations

import time

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series double the output and no dashboard reads them

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneforge_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("tuneforge_request_seconds", "Time from request to response start.",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inputs = Counter("tuneforge_inputs", "Texts or prompts processed.", ["endpoint"], registry=r)
        self.batch_size = Histogram("tuneforge_batch_size", "Inputs per model call (dynamic micro-batching).",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tuneforge_queue_depth", "Inputs waiting for the model.", registry=r)
        self.prompt_tokens = Counter("tuneforge_prompt_tokens", "Input tokens read by the model.", registry=r)
        self.generated_tokens = Counter("tuneforge_generated_tokens", "Tokens generated.", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting every response by route template (not raw path: bounded labels)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self.metrics.latency.labels(_endpoint(scope)).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.requests.labels(_endpoint(scope), str(status[0])).inc()


def _endpoint(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
