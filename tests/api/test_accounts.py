"""/api/accounts against the real Dovecot and Postfix of the stack."""

from __future__ import annotations

import io
import json
import logging

import pytest
from sqlalchemy import text

from app import create_app
from app.logs import configure_logging


def create(client, user, body):
    return client.post("/api/accounts", json=body, headers=user.headers)


def test_create_read_list_delete(client, tenant_a, mail_account_body):
    response = create(client, tenant_a, mail_account_body())
    assert response.status_code == 201
    account = response.get_json()
    assert response.headers["Location"] == f"/api/accounts/{account['id']}"
    assert account["email"] == "alice@example.test"
    assert account["display_name"] == "Alice Example"
    assert account["state"] == "active"
    assert account["imap"]["security"] == "starttls"
    assert set(account["imap"]) == {"host", "port", "security", "username"}
    assert account["created_at"].endswith("Z") and "." in account["created_at"]

    got = client.get(f"/api/accounts/{account['id']}", headers=tenant_a.headers)
    assert got.get_json() == account
    listed = client.get("/api/accounts", headers=tenant_a.headers).get_json()
    assert listed == {"items": [account], "next_cursor": None}

    assert (
        client.delete(f"/api/accounts/{account['id']}", headers=tenant_a.headers).status_code == 204
    )
    assert client.get(f"/api/accounts/{account['id']}", headers=tenant_a.headers).status_code == 404


def test_verify_logs_in_to_the_real_servers(client, tenant_a, mail_account_body):
    response = create(client, tenant_a, mail_account_body(verify=True))
    assert response.status_code == 201, response.get_json()


def test_verify_with_a_wrong_imap_password_is_422_with_the_servers_reason(
    client, tenant_a, mail_account_body
):
    body = mail_account_body(verify=True)
    body["imap"]["password"] = "wrong-password"
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    [detail] = error["details"]
    assert detail["field"] == "imap"
    assert detail["message"].startswith("login refused: ")
    assert (
        "AUTHENTICATIONFAILED" in detail["message"] or "Authentication failed" in detail["message"]
    )
    assert client.get("/api/accounts", headers=tenant_a.headers).get_json()["items"] == []


def test_verify_with_a_wrong_smtp_password_names_smtp(client, tenant_a, mail_account_body):
    body = mail_account_body(verify=True)
    body["smtp"]["password"] = "wrong-password"
    [detail] = create(client, tenant_a, body).get_json()["error"]["details"]
    assert detail["field"] == "smtp"
    assert detail["message"].startswith("login refused: 535")


def test_verify_reports_an_unreachable_server(env, tenant_a, mail_account_body):
    from tests.support import allowing, free_port

    port = free_port()
    client = create_app(allowing(env, f"127.0.0.1:{port}")).test_client()
    body = mail_account_body(verify=True)
    body["imap"]["port"] = port
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    [detail] = response.get_json()["error"]["details"]
    assert detail == {"field": "imap", "message": "connection refused"}


def test_put_replaces_and_keeps_passwords_left_out(client, tenant_a, mail_account_body, stack):
    account = create(client, tenant_a, mail_account_body()).get_json()
    body = mail_account_body(display_name="Renamed", verify=True)
    del body["imap"]["password"]
    del body["smtp"]["password"]
    response = client.put(f"/api/accounts/{account['id']}", json=body, headers=tenant_a.headers)
    assert response.status_code == 200, response.get_json()  # verify used the stored passwords
    assert response.get_json()["display_name"] == "Renamed"


def test_patch_changes_only_what_it_names(client, tenant_a, mail_account_body, stack):
    account = create(client, tenant_a, mail_account_body()).get_json()
    password = stack.users["alice@example.test"]
    response = client.patch(
        f"/api/accounts/{account['id']}",
        json={
            "imap": {"security": "ssl", "port": stack.imaps_port, "password": password},
            "verify": True,
        },
        headers=tenant_a.headers,
    )
    assert response.status_code == 200, response.get_json()
    patched = response.get_json()
    assert patched["imap"]["port"] == stack.imaps_port
    assert patched["imap"]["security"] == "ssl"
    assert patched["smtp"] == account["smtp"]
    assert patched["display_name"] == account["display_name"]
    nulled = client.patch(
        f"/api/accounts/{account['id']}", json={"email": None}, headers=tenant_a.headers
    )
    assert nulled.status_code == 422


def test_new_credentials_reactivate_an_auth_failed_account(client, db, tenant_a, mail_account_body):
    account = create(client, tenant_a, mail_account_body()).get_json()
    db.execute(
        text(
            "UPDATE accounts SET state = 'auth_failed', last_error = 'AUTHENTICATIONFAILED' "
            "WHERE id = :id"
        ),
        {"id": account["id"]},
    )
    db.commit()
    unchanged = client.patch(
        f"/api/accounts/{account['id']}", json={"display_name": "x"}, headers=tenant_a.headers
    )
    assert unchanged.get_json()["state"] == "auth_failed"
    body = mail_account_body()
    response = client.put(f"/api/accounts/{account['id']}", json=body, headers=tenant_a.headers)
    assert response.get_json()["state"] == "auth_failed"  # same password: nothing new to try
    body["imap"]["username"] = "ALICE@example.test"
    response = client.put(f"/api/accounts/{account['id']}", json=body, headers=tenant_a.headers)
    assert response.get_json()["state"] == "active"
    assert response.get_json()["last_error"] is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("email"), "email"),
        (lambda b: b.update(email="not-an-address"), "email"),
        (lambda b: b["imap"].update(port="993"), "imap.port"),
        (lambda b: b["imap"].update(port=0), "imap.port"),
        (lambda b: b["smtp"].update(security="tls"), "smtp.security"),
        (lambda b: b["imap"].update(host="bad host"), "imap.host"),
        (lambda b: b["smtp"].pop("password"), "smtp.password"),
        (lambda b: b.update(unexpected=1), "unexpected"),
        (lambda b: b.update(display_name="a\r\nBcc: x"), "display_name"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(
    client, tenant_a, mail_account_body, mutate, field
):
    body = mail_account_body()
    mutate(body)
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    assert field in [d["field"] for d in response.get_json()["error"]["details"]]


def test_malformed_and_non_json_and_oversized_bodies(env, migrated, tenant_a):
    app = create_app(dict(env, MAX_MESSAGE_BYTES="4096"))
    client = app.test_client()
    h = tenant_a.headers
    assert (
        client.post(
            "/api/accounts", data='{"email": ', content_type="application/json", headers=h
        ).status_code
        == 400
    )
    assert client.post("/api/accounts", data="email=x", headers=h).status_code == 415
    assert client.post("/api/accounts", json=[1, 2], headers=h).status_code == 422
    huge = client.post(
        "/api/accounts",
        data=json.dumps({"email": "x" * 10_000}),
        content_type="application/json",
        headers=h,
    )
    assert huge.status_code == 413
    assert huge.get_json()["error"]["code"] == "payload_too_large"


def test_pagination_is_keyset_and_clamped(client, tenant_a, mail_account_body):
    ids = [create(client, tenant_a, mail_account_body()).get_json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/accounts", query_string=query, headers=tenant_a.headers).get_json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    big = client.get("/api/accounts?limit=100000", headers=tenant_a.headers)
    assert big.status_code == 200 and len(big.get_json()["items"]) == 5
    for bad in ("limit=0", "limit=ten", "cursor=garbage!", "cursor=eyJrIjogImEifQ"):
        response = client.get(f"/api/accounts?{bad}", headers=tenant_a.headers)
        assert response.status_code == 422, bad


def test_huge_ids_are_404_not_500(client, tenant_a):
    for huge in (2**31, 2**63 - 1, 2**63, 10**19 - 1, 2**70):
        for method in ("GET", "DELETE", "PATCH"):
            response = client.open(f"/api/accounts/{huge}", method=method, headers=tenant_a.headers)
            assert response.status_code == 404, (huge, method)


def test_passwords_never_leave_or_sit_in_plain_text(
    env, migrated, db, tenant_a, mail_account_body, stack
):
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        client = create_app(env).test_client()
        body = mail_account_body(verify=True)
        password = body["imap"]["password"]
        response = create(client, tenant_a, body)
        assert response.status_code == 201
        account_id = response.get_json()["id"]
        listed = client.get("/api/accounts", headers=tenant_a.headers)
    finally:
        configure_logging("INFO")
        logging.getLogger().setLevel(logging.INFO)
    assert password not in response.get_data(as_text=True)
    assert password not in listed.get_data(as_text=True)
    assert password not in stream.getvalue()
    row = (
        db.execute(text("SELECT * FROM accounts WHERE id = :id"), {"id": account_id})
        .mappings()
        .one()
    )
    for column, value in row.items():
        raw = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
        assert password.encode() not in raw, column


@pytest.mark.parametrize("escaped", ["\\ud800", "\\u0000"])
def test_strings_postgres_cannot_store_are_422(client, tenant_a, escaped):
    raw = '{"email": "a@example.test", "imap": {"username": "x%sy"}}' % escaped
    response = client.post(
        "/api/accounts", data=raw, content_type="application/json", headers=tenant_a.headers
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "imap.username"
    login = client.post(
        "/auth/login",
        data='{"tenant": "a", "username": "%s", "password": "p"}' % escaped,
        content_type="application/json",
    )
    assert login.status_code == 422
