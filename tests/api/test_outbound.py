"""Outbound connections: which hosts an account may name, what a tenant reads of a failure, and
which password goes where. Against the real stack, and peers of the tests' own on loopback that
are no mail servers (tests/peers.py).
"""

from __future__ import annotations

import pytest

from app import create_app
from tests.peers import REDIS_ERROR, SSH_BANNER, Listener
from tests.support import allowing

PEER_BYTES = (b"SSH", b"OpenSSH", b"SECRET", b"-ERR", b"unknown command")


def create(client, user, body):
    return client.post("/api/accounts", json=body, headers=user.headers)


def fields_of(response) -> dict[str, str]:
    return {d["field"]: d["message"] for d in response.get_json()["error"]["details"]}


# Loopback in every spelling: each resolves to an address the policy refuses.
LOOPBACK_FORMS = ["127.0.0.1", "0x7f.1", "2130706433", "127.1", "::ffff:127.0.0.1", "localhost"]


@pytest.mark.parametrize("kind", ["imap", "smtp"])
@pytest.mark.parametrize("host", LOOPBACK_FORMS)
def test_loopback_in_any_spelling_is_refused_and_never_connected_to(
    client, tenant_a, mail_account_body, kind, host
):
    with Listener(b"* OK IMAP4rev1 ready\r\n220 ready\r\n") as listener:
        for verify in (False, True):
            body = mail_account_body(verify=verify)
            body[kind].update(host=host, port=listener.port)
            response = create(client, tenant_a, body)
            assert response.status_code == 422, response.get_json()
            message = fields_of(response)[f"{kind}.host"]
            assert message.startswith("address not allowed")
        assert listener.connections == 0
    assert client.get("/api/accounts", headers=tenant_a.headers).get_json()["items"] == []


def test_ipv6_loopback_is_refused_and_never_connected_to(client, tenant_a, mail_account_body):
    with Listener(b"* OK ready\r\n", host="::1") as listener:
        for host in ("::1", "[::1]"):
            body = mail_account_body(verify=True)
            body["imap"].update(host=host, port=listener.port)
            response = create(client, tenant_a, body)
            assert response.status_code == 422
            assert fields_of(response)["imap.host"].startswith("address not allowed")
        assert listener.connections == 0


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1", 6379),  # Redis
        ("127.0.0.1", 5432),  # PostgreSQL
        ("169.254.169.254", 80),  # cloud metadata
        ("10.0.0.1", 993),
        ("192.168.1.1", 993),
        ("100.64.0.1", 993),
        ("0.0.0.0", 993),
        ("fd00::1", 993),
    ],
)
def test_internal_services_are_refused_on_create_replace_and_patch(
    client, tenant_a, mail_account_body, stack, host, port
):
    body = mail_account_body()
    body["smtp"].update(host=host, port=port)
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    assert "smtp.host" in fields_of(response)

    account = create(client, tenant_a, mail_account_body()).get_json()
    url = f"/api/accounts/{account['id']}"
    body = mail_account_body()
    body["imap"].update(host=host, port=port)
    replaced = client.put(url, json=body, headers=tenant_a.headers)
    assert replaced.status_code == 422 and "imap.host" in fields_of(replaced)
    patch = {"imap": {"host": host, "port": port, "password": "x"}}
    patched = client.patch(url, json=patch, headers=tenant_a.headers)
    assert patched.status_code == 422 and "imap.host" in fields_of(patched)
    assert client.get(url, headers=tenant_a.headers).get_json()["imap"]["host"] == stack.host


def test_the_stacks_own_servers_are_allowed_even_in_clear_text(
    client, tenant_a, mail_account_body, stack
):
    body = mail_account_body(verify=True)
    body["imap"].update(security="none")
    response = create(client, tenant_a, body)
    assert response.status_code == 201, response.get_json()


def test_clear_text_is_refused_for_a_host_no_entry_allows(client, tenant_a, mail_account_body):
    body = mail_account_body()
    body["smtp"].update(host="8.8.8.8", port=587, security="none")
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    assert set(fields_of(response)) == {"smtp.security"}
    # Another port of an allowed private host is not allowed either.
    body = mail_account_body()
    body["imap"].update(port=6379, security="none")
    assert "imap.host" in fields_of(create(client, tenant_a, body))


def test_a_changed_server_needs_its_password_again(
    client, tenant_a, mail_account_body, stack
):
    account = create(client, tenant_a, mail_account_body()).get_json()
    url = f"/api/accounts/{account['id']}"
    user = "alice@example.test"
    for change in (
        {"host": "localhost"},
        {"port": stack.imaps_port},
        {"username": "bob@example.test"},
        {"security": "ssl"},
    ):
        response = client.patch(url, json={"imap": change}, headers=tenant_a.headers)
        assert response.status_code == 422, change
        message = fields_of(response)["imap.password"]
        assert "required when the server changes" in message
    body = mail_account_body()
    del body["imap"]["password"], body["smtp"]["password"]
    body["smtp"]["port"] = stack.submissions_port
    body["smtp"]["security"] = "ssl"
    response = client.put(url, json=body, headers=tenant_a.headers)
    assert set(fields_of(response)) == {"smtp.password"}
    # Unchanged: nothing new to send anywhere, the stored password stays.
    unchanged = client.put(url, json=mail_account_body(verify=True), headers=tenant_a.headers)
    assert unchanged.status_code == 200
    body = mail_account_body(verify=True)
    del body["imap"]["password"], body["smtp"]["password"]
    assert client.put(url, json=body, headers=tenant_a.headers).status_code == 200
    # With the password in the same request the change is taken (and verified).
    change = {"port": stack.imaps_port, "security": "ssl", "password": stack.users[user]}
    response = client.patch(url, json={"imap": change, "verify": True}, headers=tenant_a.headers)
    assert response.status_code == 200, response.get_json()
    assert client.get(url, headers=tenant_a.headers).get_json()["imap"]["port"] == stack.imaps_port


def test_tls_verifies_the_name_given_while_connecting_to_the_checked_address(
    client, tenant_a, mail_account_body, stack
):
    # 0x7f.1 resolves to 127.0.0.1, which the stack's entries allow, so the connection is
    # made; the certificate names localhost and 127.0.0.1, not "0x7f.1": TLS must refuse.
    body = mail_account_body(verify=True)
    body["imap"].update(host="0x7f.1", port=stack.imaps_port, security="ssl")
    body["smtp"].update(host="0x7f.1")  # STARTTLS on submission
    response = create(client, tenant_a, body)
    assert response.status_code == 422
    assert fields_of(response) == {"imap": "TLS failed", "smtp": "TLS failed"}


@pytest.mark.parametrize("banner", [SSH_BANNER, REDIS_ERROR], ids=["ssh", "redis"])
def test_a_verify_shows_none_of_a_non_mail_servers_bytes(
    env, tenant_a, mail_account_body, banner
):
    with Listener(banner) as peer:
        client = create_app(allowing(env, peer.pair)).test_client()
        body = mail_account_body(verify=True)
        body["imap"].update(host="127.0.0.1", port=peer.port, security="none")
        body["smtp"].update(host="127.0.0.1", port=peer.port, security="none")
        response = create(client, tenant_a, body)
    assert response.status_code == 422
    assert fields_of(response) == {"imap": "not an IMAP server", "smtp": "not an SMTP server"}
    assert not any(part in response.data for part in PEER_BYTES)


@pytest.mark.parametrize("banner", [SSH_BANNER, REDIS_ERROR], ids=["ssh", "redis"])
def test_sync_and_outbox_errors_show_none_of_a_non_mail_servers_bytes(
    env, ctx_allowing, tenant_a, mailbox, make_syncer, db_sessionmaker, banner
):
    from app.mail import MailConnectionError
    from app.models import OutboxEntry
    from app.services.accounts import ServerFields
    from app.services.outbox import Deliverer, RetryPolicy
    from app.states import Security
    from tests.mailbox import add_account
    from tests.services.test_outbox import queue

    with Listener(banner) as peer:
        ctx = ctx_allowing(peer.pair)
        hostile = type(mailbox)(**{**vars(mailbox), "imap_port": peer.port})
        smtp = ServerFields("127.0.0.1", peer.port, Security.NONE, mailbox.email, "any")
        account_id = add_account(ctx, tenant_a.tenant_id, hostile, smtp=smtp)
        with pytest.raises(MailConnectionError):
            make_syncer(context=ctx).sync_account(account_id)
        outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
        Deliverer(ctx, RetryPolicy(max_attempts=3)).deliver(outbox_id)
        client = create_app(allowing(env, peer.pair)).test_client()
        status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers)
    assert status.get_json()["last_error"] == "not an IMAP server"
    assert not any(part in status.data for part in PEER_BYTES)
    with db_sessionmaker() as session:
        last_error = session.get(OutboxEntry, outbox_id).last_error
    assert last_error == "not an SMTP server"


def test_a_server_no_longer_allowed_is_never_connected_to(
    client, ctx, ctx_allowing, tenant_a, mailbox, make_syncer, db_sessionmaker
):
    """The policy applies to every connection, not only to new settings: an account made
    while a host was allowed is refused once the operator no longer allows it."""
    from app.mail import MailConnectionError
    from app.models import OutboxEntry
    from app.services.accounts import ServerFields
    from app.services.outbox import Deliverer, RetryPolicy
    from app.states import Security
    from tests.mailbox import add_account
    from tests.services.test_outbox import queue

    with Listener(b"* OK IMAP4rev1 ready\r\n") as peer:
        allowed = ctx_allowing(peer.pair)
        hostile = type(mailbox)(**{**vars(mailbox), "imap_port": peer.port})
        smtp = ServerFields("127.0.0.1", peer.port, Security.NONE, mailbox.email, "any")
        account_id = add_account(allowed, tenant_a.tenant_id, hostile, smtp=smtp)
        with pytest.raises(MailConnectionError) as raised:
            make_syncer().sync_account(account_id)  # the session's context: not allowed
        assert str(raised.value) == "address not allowed"
        outbox_id = queue(allowed, tenant_a.tenant_id, account_id, ["x@example.test"])
        Deliverer(ctx, RetryPolicy(max_attempts=3)).deliver(outbox_id)
        assert peer.connections == 0
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers).get_json()
    assert status["last_error"] == "address not allowed"
    with db_sessionmaker() as session:
        assert session.get(OutboxEntry, outbox_id).last_error == "address not allowed"
