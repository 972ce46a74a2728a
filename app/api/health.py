"""Service endpoints without authentication: /health and /metrics."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.edge import context, respond
from app.api.observability import metrics_registry
from app.api.openapi import operation
from app.schemas.health import HealthOut
from app.services.health import check_dependencies

bp = Blueprint("health", __name__)


@bp.get("/health")
@operation(
    "Service health: PostgreSQL and Redis reachable",
    tags=("service",),
    responses={
        200: ("Every dependency answers.", HealthOut),
        503: ("A dependency does not answer; `checks` says which.", HealthOut),
    },
    auth=False,
)
def health() -> Response:
    body = HealthOut.of(check_dependencies(context()))
    response = respond(body, 200 if body.status == "ok" else 503)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
@operation(
    "Prometheus metrics",
    tags=("service",),
    responses={200: ("Prometheus text exposition format.", "text/plain")},
    auth=False,
)
def metrics() -> Response:
    return Response(generate_latest(metrics_registry()), mimetype=CONTENT_TYPE_LATEST)
