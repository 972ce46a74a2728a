"""Per-request id, JSON access log and Prometheus metrics for every route."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.context import ServiceContext
from app.logs import request_id_var

log = logging.getLogger("app.access")

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

# A client-supplied id is echoed into logs and headers: accept only a safe, bounded token.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, otherwise a fresh one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return uuid.uuid4().hex


class JobCollector:
    """Queue depths, job outcomes and the scheduler's heartbeat, read from Redis at scrape
    time."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        try:
            depths = self.ctx.jobs.depths()
            counts = self.ctx.counters.snapshot()
        except Exception:  # a scrape during a Redis outage reports what it can
            return
        queued = GaugeMetricFamily(
            "emailservice_queue_jobs", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        for name, depth in depths.items():
            queued.add_metric([name], depth)
        yield queued
        sends = CounterMetricFamily(
            "emailservice_send_attempts",
            "Delivery attempts of outbox entries by outcome (deferred: retried later).",
            labels=["outcome"],
        )
        for outcome, count in counts.sends.items():
            sends.add_metric([outcome], count)
        yield sends
        runs = CounterMetricFamily(
            "emailservice_sync_runs",
            "Sync jobs by outcome (continued: stopped at its bounds and queued its continuation).",
            labels=["outcome"],
        )
        for outcome, count in counts.syncs.items():
            runs.add_metric([outcome], count)
        yield runs
        yield CounterMetricFamily(
            "emailservice_sync_messages_fetched",
            "Messages fetched from IMAP servers by sync jobs.",
            value=counts.messages_fetched,
        )
        if counts.heartbeat is not None:
            yield GaugeMetricFamily(
                "emailservice_heartbeat_timestamp_seconds",
                "When a worker last ran the scheduler's heartbeat job (Unix time).",
                value=counts.heartbeat,
            )


def init_app(app: Flask, ctx: ServiceContext) -> None:
    """Install the request hooks and a registry of this app's own metrics."""
    registry = CollectorRegistry()
    requests = Counter(
        "emailservice_http_requests_total",
        "HTTP requests by method, route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "emailservice_http_request_duration_seconds",
        "HTTP request latency by method, route and status.",
        ["method", "route", "status"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=registry,
    )
    registry.register(JobCollector(ctx))
    app.extensions["metrics.registry"] = registry

    @app.before_request
    def start_request() -> None:
        g.request_started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get("X-Request-ID"))
        g.request_id_token = request_id_var.set(g.request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        started = g.get("request_started")
        request_id = g.get("request_id") or request_id_from(None)
        response.headers["X-Request-ID"] = request_id
        # Label by the route template, never the raw path: ids in paths would make
        # one time series per resource.
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        status = str(response.status_code)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        requests.labels(request.method, route, status).inc()
        latency.labels(request.method, route, status).observe(elapsed)
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response

    @app.teardown_request
    def forget_request_id(exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def metrics_registry() -> CollectorRegistry:
    """The current app's registry."""
    registry: CollectorRegistry = current_app.extensions["metrics.registry"]
    return registry
