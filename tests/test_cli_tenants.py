"""The operator's CLI: tenants, users, tokens and encryption keys, end to end with the API."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app import create_app
from app.secrets import SecretBox, generate_key
from tests.support import run_cli


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def slug() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_tenant_user_token_round_trip(env, migrated, tmp_path, slug):
    assert run_cli(["tenant", "create", slug], env, tmp_path).stdout == f"tenant {slug} created\n"
    duplicate = run_cli(["tenant", "create", slug], env, tmp_path)
    assert duplicate.returncode == 1
    assert duplicate.stderr == f"Error: Tenant '{slug}' already exists.\n"

    password = "correct horse battery"
    created = run_cli(
        ["user", "create", "--tenant", slug, "bob"], env, tmp_path, input=password + "\n"
    )
    assert created.returncode == 0, created.stderr

    client = create_app(env).test_client()
    login = client.post(
        "/auth/login", json={"tenant": slug, "username": "bob", "password": password}
    )
    assert login.status_code == 200

    printed = run_cli(["token", "--tenant", slug, "bob"], env, tmp_path)
    assert printed.returncode == 0
    token = printed.stdout.strip()
    assert (
        client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )

    deleted = run_cli(["user", "delete", "--tenant", slug, "bob"], env, tmp_path)
    assert deleted.returncode == 0
    assert (
        client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    )


def test_passwords_are_stored_as_argon2id_hashes(env, migrated, tmp_path, slug):
    run_cli(["tenant", "create", slug], env, tmp_path)
    password = "a password to hash"
    run_cli(["user", "create", "--tenant", slug, "carol"], env, tmp_path, input=password + "\n")
    with psycopg.connect(libpq(env["DATABASE_URL"])) as conn:
        [stored] = conn.execute(
            "SELECT password_hash FROM users JOIN tenants ON tenants.id = users.tenant_id "
            "WHERE slug = %s",
            (slug,),
        ).fetchone()
    assert stored.startswith("$argon2id$")
    assert password not in stored


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenant", "create", "Not A Slug"], "Tenant name 'Not A Slug' must match"),
        (
            ["user", "create", "--tenant", "no-such-tenant", "x"],
            "Tenant 'no-such-tenant' does not exist.",
        ),
        (
            ["user", "delete", "--tenant", "no-such-tenant", "x"],
            "Tenant 'no-such-tenant' does not exist.",
        ),
        (["token", "--tenant", "no-such-tenant", "x"], "Tenant 'no-such-tenant' does not exist."),
    ],
)
def test_bad_values_are_named(env, migrated, tmp_path, args, message):
    result = run_cli(args, env, tmp_path, input="some password\n")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {message}")
    assert "Traceback" not in result.stderr


def test_short_password_is_refused(env, migrated, tmp_path, slug):
    run_cli(["tenant", "create", slug], env, tmp_path)
    result = run_cli(["user", "create", "--tenant", slug, "dan"], env, tmp_path, input="short\n")
    assert result.returncode == 1
    assert "at least 8 characters" in result.stderr


def test_keys_generate_prints_a_usable_key(env, tmp_path):
    key = run_cli(["keys", "generate"], env, tmp_path).stdout.strip()
    box = SecretBox((key,))
    assert box.decrypt(box.encrypt("x")) == "x"


def test_key_rotation_moves_every_secret_to_the_new_key(
    fresh_migrated_env, fresh_ctx, tmp_path, mail_account_body, stack
):
    from tests.conftest import make_tenant_user

    old_env = fresh_migrated_env
    user = make_tenant_user(fresh_ctx)
    old_client = create_app(old_env).test_client()
    ids = [
        old_client.post("/api/accounts", json=mail_account_body(), headers=user.headers).get_json()[
            "id"
        ]
        for _ in range(3)
    ]

    new_key = generate_key()
    rotated_env = dict(old_env, ENCRYPTION_KEY=f"{new_key},{old_env['ENCRYPTION_KEY']}")
    result = run_cli(["keys", "rotate"], rotated_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6 of 6 secrets re-encrypted under the newest key\n"
    again = run_cli(["keys", "rotate"], rotated_env, tmp_path)
    assert again.stdout == "0 of 6 secrets re-encrypted under the newest key\n"

    new_only, old_only = SecretBox((new_key,)), SecretBox((old_env["ENCRYPTION_KEY"],))
    with psycopg.connect(libpq(old_env["DATABASE_URL"])) as conn:
        rows = conn.execute(
            "SELECT imap_password_encrypted, smtp_password_encrypted FROM accounts"
        ).fetchall()
    assert len(rows) == 3
    for token in (bytes(t) for row in rows for t in row):
        assert new_only.decrypt(token) == stack.users["alice@example.test"]
        assert not old_only.is_current(token)

    # The service runs on the new key alone: verification decrypts the stored passwords.
    new_client = create_app(dict(old_env, ENCRYPTION_KEY=new_key)).test_client()
    body = mail_account_body(verify=True)
    del body["imap"]["password"], body["smtp"]["password"]
    response = new_client.put(f"/api/accounts/{ids[0]}", json=body, headers=user.headers)
    assert response.status_code == 200, response.get_json()
