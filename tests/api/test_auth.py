"""Login, and every way a bearer token can be wrong."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from app import create_app
from app.services.auth import generation_key, revoke_tokens
from app.services.tenants import create_user, delete_user
from tests.support import TcpProxy, api_process, app_through_redis_proxy, http_get, run_cli


def login(client, **body):
    return client.post("/auth/login", json=body)


def test_login_returns_a_token_that_opens_the_api(client, tenant_a):
    response = login(client, tenant=tenant_a.slug, username="alice", password=tenant_a.password)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(tenant_a.user_id)
    assert claims["tenant"] == tenant_a.slug
    assert claims["exp"] - claims["iat"] == 3600
    assert len(claims["jti"]) >= 16
    listed = client.get(
        "/api/accounts", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert listed.status_code == 200


@pytest.mark.parametrize("wrong", ["password", "username", "tenant"])
def test_wrong_credentials_are_401_without_saying_which(client, tenant_a, wrong):
    body = {"tenant": tenant_a.slug, "username": "alice", "password": tenant_a.password}
    body[wrong] = body[wrong] + "x"
    response = login(client, **body)
    assert response.status_code == 401
    assert response.get_json() == {
        "error": {"code": "unauthorized", "message": "Invalid credentials."}
    }


def test_login_body_is_validated(client):
    assert client.post("/auth/login", data="{", content_type="application/json").status_code == 400
    assert client.post("/auth/login", data="tenant=x").status_code == 415
    response = login(client, tenant="x", username="alice")
    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == [
        {"field": "password", "message": "Field required"}
    ]


def forge(claims: dict, secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def valid_claims(user) -> dict:
    now = int(time.time())
    return {
        "sub": str(user.user_id),
        "tenant": user.slug,
        "iat": now,
        "exp": now + 600,
        "jti": "0123456789abcdef",
    }


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda u, s: None, id="missing"),
        pytest.param(lambda u, s: "Bearer", id="empty-bearer"),
        pytest.param(lambda u, s: f"Basic {u.token}", id="other-scheme"),
        pytest.param(lambda u, s: "Bearer not.a.jwt", id="malformed"),
        pytest.param(lambda u, s: f"Bearer {u.token[:-4]}AAAA", id="tampered-signature"),
        pytest.param(
            lambda u, s: "Bearer " + forge(valid_claims(u), "another-secret-" * 3),
            id="wrong-secret",
        ),
        pytest.param(lambda u, s: "Bearer " + unsigned(valid_claims(u)), id="alg-none"),
        pytest.param(
            lambda u, s: "Bearer " + forge(valid_claims(u), s, "HS512"), id="other-algorithm"
        ),
        pytest.param(
            lambda u, s: "Bearer " + forge({**valid_claims(u), "iat": 1, "exp": 2}, s), id="expired"
        ),
        pytest.param(
            lambda u, s: (
                "Bearer " + forge({k: v for k, v in valid_claims(u).items() if k != "exp"}, s)
            ),
            id="no-expiry",
        ),
        pytest.param(
            lambda u, s: "Bearer " + forge({**valid_claims(u), "tenant": ["x"]}, s),
            id="bad-tenant-claim",
        ),
        pytest.param(
            lambda u, s: "Bearer " + forge({**valid_claims(u), "sub": "999999999"}, s),
            id="unknown-user",
        ),
    ],
)
def test_bad_tokens_are_401(client, env, tenant_a, make_header):
    header = make_header(tenant_a, env["JWT_SECRET"])
    headers = {"Authorization": header} if header is not None else {}
    response = client.get("/api/accounts", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_token_of_another_tenant_claim_is_401(client, env, tenant_a, tenant_b):
    # A real user id with another tenant's slug: the pair must match.
    claims = {**valid_claims(tenant_a), "tenant": tenant_b.slug}
    response = client.get(
        "/api/accounts", headers={"Authorization": "Bearer " + forge(claims, env["JWT_SECRET"])}
    )
    assert response.status_code == 401


def test_deleted_user_token_stops_working_even_when_recreated(client, unit, tenant_a):
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    delete_user(unit, tenant_a.slug, "alice")
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 401
    create_user(unit, tenant_a.slug, "alice", "a-new-password")
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 401


def user_lookups(app) -> list[str]:
    """Every statement of `app`'s engine that reads the users table, from now on."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args) -> None:
        if "FROM users" in statement:
            seen.append(statement)

    event.listen(app.extensions["context"].engine, "before_cursor_execute", record)
    return seen


def test_a_token_is_looked_up_once_until_its_tenant_revokes(env, migrated, ctx, tenant_a, tenant_b):
    app = create_app(env)
    client = app.test_client()
    lookups = user_lookups(app)
    for _ in range(3):
        assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    assert len(lookups) == 1
    # Another tenant's revocation does not touch this one's.
    revoke_tokens(ctx, tenant_b.slug)
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    assert len(lookups) == 1
    revoke_tokens(ctx, tenant_a.slug)
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    assert len(lookups) == 2


def test_a_lost_generation_is_a_revocation(env, migrated, redis_client, tenant_a):
    """Redis restarted without its data: nothing remembered under the old generation counts."""
    app = create_app(env)
    client = app.test_client()
    lookups = user_lookups(app)
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    redis_client.delete(generation_key(tenant_a.slug))
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200
    assert len(lookups) == 2


def test_a_deleted_user_is_refused_at_once_by_every_api_process(env, migrated, tenant_a, tmp_path):
    with (
        api_process(env, tmp_path) as (first, _),
        api_process(env, tmp_path) as (second, _),
    ):
        for port in (first, second, first, second):  # both remember the token now
            assert http_get(port, "/api/accounts", tenant_a.headers)[0] == 200
        deleted = run_cli(["user", "delete", "--tenant", tenant_a.slug, "alice"], env, tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        assert http_get(second, "/api/accounts", tenant_a.headers)[0] == 401
        assert http_get(first, "/api/accounts", tenant_a.headers)[0] == 401


def test_with_redis_down_a_deleted_user_is_401_not_a_remembered_200(
    env, migrated, unit, tenant_a, tenant_b
):
    with app_through_redis_proxy(env) as (client, proxy):
        for user in (tenant_a, tenant_b):
            assert client.get("/api/accounts", headers=user.headers).status_code == 200
        proxy.stop()
        delete_user(unit, tenant_a.slug, "alice")  # the service's own Redis still answers
        assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 401
        # A user who still exists meets the rate limit's outage, as before.
        assert client.get("/api/accounts", headers=tenant_b.headers).status_code == 503


def test_deleting_a_user_while_redis_is_down_deletes_nothing(env, migrated, tenant_a, tmp_path):
    redis = make_url(env["REDIS_URL"])
    proxy = TcpProxy((redis.host, redis.port))  # never started: nothing answers
    down = dict(env, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{redis.database}")
    deleted = run_cli(["user", "delete", "--tenant", tenant_a.slug, "alice"], down, tmp_path)
    assert deleted.returncode != 0
    assert "Redis is unavailable" in deleted.stderr
    client = create_app(env).test_client()
    assert client.get("/api/accounts", headers=tenant_a.headers).status_code == 200


def test_tenant_header_must_match_the_token(client, tenant_a, tenant_b):
    same = client.get("/api/accounts", headers={**tenant_a.headers, "X-Tenant-ID": tenant_a.slug})
    assert same.status_code == 200
    other = client.get("/api/accounts", headers={**tenant_a.headers, "X-Tenant-ID": tenant_b.slug})
    assert other.status_code == 403
    assert other.get_json()["error"]["code"] == "forbidden"
    # The header alone grants nothing.
    alone = client.get("/api/accounts", headers={"X-Tenant-ID": tenant_b.slug})
    assert alone.status_code == 401


def test_a_deleted_users_token_is_401_whatever_tenant_header_it_sends(
    client, unit, tenant_a, tenant_b
):
    delete_user(unit, tenant_a.slug, "alice")
    other = client.get("/api/accounts", headers={**tenant_a.headers, "X-Tenant-ID": tenant_b.slug})
    assert other.status_code == 401


def test_authentication_comes_before_existence(client):
    assert client.get("/api/accounts/123456").status_code == 401
    assert client.get("/api/no-such-thing").status_code == 401


def test_logins_are_limited_per_client_address(env, migrated, tenant_a, tenant_b):
    app = create_app(dict(env, LOGIN_RATE_LIMIT_PER_MINUTE="3"))
    client = app.test_client()
    guesser = {"REMOTE_ADDR": f"127.1.{tenant_a.user_id % 250}.9"}
    bad = {"tenant": tenant_a.slug, "username": "alice", "password": "guess"}
    statuses = [
        client.post("/auth/login", json=bad, environ_base=guesser).status_code for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    limited = client.post("/auth/login", json=bad, environ_base=guesser)
    assert int(limited.headers["Retry-After"]) >= 1
    # Even the right password waits: that is what stops guessing.
    good = dict(bad, password=tenant_a.password)
    assert client.post("/auth/login", json=good, environ_base=guesser).status_code == 429
    # Another address is unaffected (for another user: this one's attempts are spent too).
    other = {"REMOTE_ADDR": f"127.2.{tenant_a.user_id % 250}.9"}
    someone = {"tenant": tenant_b.slug, "username": "alice", "password": tenant_b.password}
    assert client.post("/auth/login", json=someone, environ_base=other).status_code == 200


def test_behind_a_trusted_proxy_logins_are_limited_per_forwarded_address(env, migrated, tenant_a):
    app = create_app(dict(env, LOGIN_RATE_LIMIT_PER_MINUTE="1", TRUSTED_PROXIES="1"))
    client = app.test_client()
    bad = {"tenant": tenant_a.slug, "username": "alice", "password": "guess"}
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    first = {"X-Forwarded-For": f"198.51.100.{tenant_a.user_id % 250}"}
    second = {"X-Forwarded-For": f"203.0.113.{tenant_a.user_id % 250}"}
    post = client.post
    assert post("/auth/login", json=bad, headers=first, environ_base=proxy).status_code == 401
    assert post("/auth/login", json=bad, headers=first, environ_base=proxy).status_code == 429
    # Another forwarded address has its own count (for another username: alice's one attempt
    # of the minute is spent, wherever the next comes from).
    other_user = dict(bad, username="bob")
    assert (
        post("/auth/login", json=other_user, headers=second, environ_base=proxy).status_code == 401
    )
    assert post("/auth/login", json=bad, headers=second, environ_base=proxy).status_code == 429


def test_rotating_addresses_get_no_more_guesses_at_one_user(env, migrated, tenant_a):
    """Behind a trusted proxy every attempt may claim a new address: the per-address limit
    alone would allow unlimited guesses. The (tenant, username) limit counts them all."""
    app = create_app(dict(env, TRUSTED_PROXIES="1", LOGIN_RATE_LIMIT_PER_MINUTE="10"))
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    net = tenant_a.user_id % 250

    def attempt(n: int, **body) -> object:
        body = {"tenant": tenant_a.slug, "username": "alice", "password": "guess", **body}
        forwarded = {"X-Forwarded-For": f"198.18.{net}.{n}"}
        return client.post("/auth/login", json=body, headers=forwarded, environ_base=proxy)

    statuses = [attempt(n).status_code for n in range(1, 12)]  # 11 addresses, one try each
    assert statuses == [401] * 10 + [429]
    refused = attempt(12, password=tenant_a.password)  # even the right password waits
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another username of the same tenant (it need not exist) has attempts of its own.
    assert attempt(13, username="bob").status_code == 401


def test_password_hashes_beyond_the_cap_are_refused_at_once(client, tenant_a):
    """Logins arriving together never queue argon2 hashes: with every hash slot of the
    process taken, further attempts are a 429 with Retry-After at once, and the next login
    after a slot frees succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    from app.services import auth as auth_service

    good = {"tenant": tenant_a.slug, "username": "alice", "password": tenant_a.password}
    net = tenant_a.user_id % 250

    def attempt(n: int):
        return client.post(
            "/auth/login", json=good, environ_base={"REMOTE_ADDR": f"127.4.{net}.{n}"}
        )

    held = 0
    try:
        # Two logins hashing right now: both slots of this process taken.
        for _ in range(auth_service.MAX_CONCURRENT_HASHES):
            assert auth_service.HASH_SLOTS.acquire(timeout=10)
            held += 1
        with ThreadPoolExecutor(4) as pool:  # four more arrive together
            responses = list(pool.map(attempt, range(1, 5), timeout=30))
        assert [r.status_code for r in responses] == [429] * 4
        assert [r.headers.get("Retry-After") for r in responses] == ["1"] * 4
        assert all(r.get_json()["error"]["code"] == "rate_limited" for r in responses)
    finally:
        for _ in range(held):
            auth_service.HASH_SLOTS.release()
    assert attempt(5).status_code == 200
