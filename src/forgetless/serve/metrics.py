"""Prometheus metrics of one server: requests, latency, time to first token, tokens, per route.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (not the global one), so
several servers in one process (tests, a hot swap that builds a second engine) never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Routes a request can take. "fallback": the adapter failed (exception or NaN logits) and the base answered.
ROUTES = ("adapter", "base", "fallback")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Router score minus threshold, in standard deviations of the domain calibration scores: the raw
# score's scale depends on the method and the model, this one does not. > 0 means "sent to base".
_MARGIN_BUCKETS = (-4, -3, -2, -1, -0.5, 0, 0.5, 1, 2, 3, 4, 6, 8)


# The only values the ``endpoint`` label takes: a request to any other path counts as "other", so
# clients cannot create new series (unbounded label cardinality) by inventing paths.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}", "/metrics", "/health")
OTHER = "other"
# Status recorded for a request whose client went away before the answer was complete (nginx's code).
CLIENT_CLOSED = "499"


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path: one of :data:`ENDPOINTS`, else :data:`OTHER`."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/") and path.count("/") == 3:
        return "/v1/models/{model}"
    return OTHER


class ServeMetrics:
    """All metrics of one server, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "forgetless_requests", "Requests answered, by endpoint, route and HTTP status (499: the client went away first).", ["endpoint", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "forgetless_request_latency_seconds", "Total latency of completed requests.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "forgetless_time_to_first_token_seconds", "Time from arrival to the first generated token.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("forgetless_tokens", "Tokens processed, by route and kind (prompt, completion).", ["route", "kind"], registry=r)
        self.fallbacks = Counter("forgetless_fallbacks", "Requests the base answered because the adapter failed.", ["reason"], registry=r)
        self.router_margin = Histogram(
            "forgetless_router_score_margin",
            "Router score minus threshold, in std of the domain calibration scores (> 0: routed to base).",
            buckets=_MARGIN_BUCKETS, registry=r,
        )  # fmt: skip
        self.router_threshold = Gauge("forgetless_router_threshold", "Threshold of the loaded router (raw score units).", registry=r)
        self.batch_size = Histogram(
            "forgetless_batch_size", "Requests per micro-batch.", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge("forgetless_queue_depth", "Requests waiting for the model.", registry=r)
        self.reloads = Counter("forgetless_reloads", "Times the served target changed and was hot-swapped.", ["kind"], registry=r)
        for route in ROUTES:  # export every route from the start, so dashboards see zeros, not gaps
            self.tokens.labels(route, "prompt")
            self.tokens.labels(route, "completion")

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
