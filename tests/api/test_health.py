"""GET /health against the real PostgreSQL and Redis, and against dead ports."""

from __future__ import annotations

from app import create_app
from tests.support import free_port


def test_health_ok_when_both_answer(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "redis": "ok"}
    assert body["version"]


def test_health_names_the_database_when_it_is_down(env):
    app = create_app(dict(env, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x"))
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert response.get_json()["checks"] == {"database": "unavailable", "redis": "ok"}


def test_health_names_redis_when_it_is_down(env):
    app = create_app(dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "ok", "redis": "unavailable"}


def test_metrics_still_answer_while_redis_is_down(env):
    app = create_app(dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert b"emailservice_http_requests_total" in response.data
