"""Per-tenant rate limits in Redis: headers, 429, shared across processes, Redis outages."""

from __future__ import annotations

import pytest

from app import create_app
from tests.support import api_process, app_through_redis_proxy, http_get, wait_for


def test_minute_limit_headers_and_429(env, migrated, tenant_a):
    client = create_app(dict(env, RATE_LIMIT_REQUESTS_PER_MINUTE="5")).test_client()
    remaining = []
    for _ in range(5):
        response = client.get("/api/accounts", headers=tenant_a.headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert 0 < int(response.headers["X-RateLimit-Reset"]) <= 60
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    limited = client.get("/api/accounts", headers=tenant_a.headers)
    assert limited.status_code == 429
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_limits_are_per_tenant(env, migrated, tenant_a, tenant_b):
    client = create_app(dict(env, RATE_LIMIT_REQUESTS_PER_MINUTE="2")).test_client()
    for _ in range(2):
        client.get("/api/accounts", headers=tenant_a.headers)
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 429
    assert client.get("/api/accounts", headers=tenant_b.headers).status_code == 200


def test_hour_limit(env, migrated, tenant_a):
    client = create_app(dict(env, RATE_LIMIT_REQUESTS_PER_HOUR="3")).test_client()
    statuses = [client.get("/api/accounts", headers=tenant_a.headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = client.get("/api/accounts", headers=tenant_a.headers)
    assert int(limited.headers["Retry-After"]) > 60  # waits for the hour window, not the minute


def test_service_endpoints_are_not_limited(env, migrated):
    client = create_app(dict(env, RATE_LIMIT_REQUESTS_PER_MINUTE="1")).test_client()
    assert {client.get("/health").status_code for _ in range(5)} == {200}
    assert {client.get("/metrics").status_code for _ in range(5)} == {200}


def get(port: int, token: str) -> int:
    return http_get(port, "/api/accounts", {"Authorization": f"Bearer {token}"})[0]


@pytest.fixture
def two_api_processes(env, migrated, tmp_path):
    settings = dict(env, RATE_LIMIT_REQUESTS_PER_MINUTE="5")
    with (
        api_process(settings, tmp_path) as (first, _),
        api_process(settings, tmp_path) as (second, _),
    ):
        yield first, second


def test_the_limit_is_shared_by_separate_api_processes(two_api_processes, tenant_a):
    first, second = two_api_processes
    statuses = [get(port, tenant_a.token) for port in (first, second, first, second, first)]
    assert statuses == [200] * 5
    assert get(second, tenant_a.token) == 429
    assert get(first, tenant_a.token) == 429


def test_redis_down_is_503_and_recovers(env, migrated, tenant_a):
    with app_through_redis_proxy(env) as (client, proxy):
        assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
        proxy.stop()
        down = client.get("/api/accounts", headers=tenant_a.headers)
        assert down.status_code == 503
        assert down.get_json()["error"]["code"] == "unavailable"
        proxy.start()
        assert wait_for(
            lambda: client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
        )
