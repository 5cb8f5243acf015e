"""Prometheus metrics of the API and ingest, and the middleware that counts requests."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "sensorium_http_requests_total", "HTTP requests handled", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "sensorium_http_request_duration_seconds",
    "Time to handle an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
INGEST_POINTS = Counter("sensorium_ingest_points_total", "Readings stored", ["transport"])
INGEST_DOCUMENTS = Counter(
    "sensorium_ingest_documents_total", "Telemetry documents stored", ["transport"]
)
INGEST_REJECTED = Counter(
    "sensorium_ingest_rejected_total",
    "Device payloads rejected, by reason (the error code)",
    ["transport", "reason"],
)


class MetricsMiddleware:
    """Counts requests by route template (not raw path, which would explode the labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(route).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    """The matched route as a template (`/api/v1/devices/{device_id}`), not the raw path,
    which would give every device its own label. Unmatched requests share one label."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in scope.get("path_params", {}).items()}
    if not names:
        return str(scope["path"])
    return "/".join(f"{{{names[s]}}}" if s in names else s for s in scope["path"].split("/"))
