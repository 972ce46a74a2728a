"""Service endpoints without authentication: /health and /metrics."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.observability import metrics_registry
from app.api.openapi import operation
from app.db import get_engine, ping
from app.schemas.health import HealthOut
from app.version import VERSION

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _check(name: str, probe) -> str:
    try:
        probe()
    except Exception as exc:  # any failure of a dependency is "unavailable", with the reason logged
        log.warning(
            "health check %s failed: %s",
            name,
            exc.__class__.__name__,
            extra={"check": name, "reason": str(exc)[:200]},
        )
        return "unavailable"
    return "ok"


@bp.get("/health")
@operation(
    "Service health: PostgreSQL and Redis reachable",
    tags=("service",),
    responses={200: ("Every dependency answers.", HealthOut)},
    auth=False,
)
def health():
    checks = {
        "database": _check("database", lambda: ping(get_engine())),
        "redis": _check("redis", current_app.extensions["redis"].ping),
    }
    healthy = all(value == "ok" for value in checks.values())
    body = HealthOut(status="ok" if healthy else "unavailable", checks=checks, version=VERSION)
    response = jsonify(body.model_dump())
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
@operation(
    "Prometheus metrics",
    tags=("service",),
    responses={200: ("Prometheus text exposition format.", "text/plain")},
    auth=False,
)
def metrics():
    return Response(generate_latest(metrics_registry()), mimetype=CONTENT_TYPE_LATEST)
