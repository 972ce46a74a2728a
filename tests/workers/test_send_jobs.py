"""Sending through the real processes: the API queues, an RQ worker delivers over SMTP.

Each test has a database of its own: a starting worker sweeps the whole outbox, and must meet
only this test's entries.
"""

from __future__ import annotations

import base64
import os
import signal
import time

import pytest

from app.config import Settings
from app.context import ServiceContext
from app.models import OutboxEntry
from app.services.accounts import ServerFields
from app.states import Security
from tests.mailbox import UserPool
from tests.services.test_outbox import arrived, inbox, make_account
from tests.smtp_peer import SmtpPeer, relay_to
from tests.support import Processes, allowing, descendants, wait_for

pytestmark = pytest.mark.usefixtures("empty_queues")


@pytest.fixture
def setting(fresh_migrated_env, fresh_ctx, tmp_path, stack_control, user_pools):
    """(settings, context, tenant user, sender mailbox, recipient mailbox, processes)."""
    from tests.conftest import make_tenant_user

    env = {**fresh_migrated_env, "SEND_RETRY_SECONDS": "1"}
    user = make_tenant_user(fresh_ctx)
    pool = user_pools.setdefault(stack_control.name, UserPool(stack_control))
    running = Processes(env, tmp_path)
    yield env, fresh_ctx, user, pool.take(), pool.take(), running
    running.stop_all()


def api_client(env):
    from app import create_app

    return create_app(env).test_client()


def outbox_entry(sessions, outbox_id: int) -> OutboxEntry:
    with sessions() as session:
        return session.get(OutboxEntry, outbox_id)


def sent_attempts(client) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    (line,) = [
        x
        for x in text.splitlines()
        if x.startswith('emailservice_send_attempts_total{outcome="sent"}')
    ]
    return float(line.split()[-1])


def test_a_draft_sent_twice_with_one_key_arrives_once_with_one_sent_copy(setting):
    env, ctx, user, sender, recipient, running = setting
    account_id = make_account(ctx, user.tenant_id, sender)
    client = api_client(env)
    counted = sent_attempts(client)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 100
    draft = client.post(
        "/api/compose",
        json={
            "account_id": account_id,
            "to": [f"Åsa Öberg <{recipient.email}>"],
            "subject": "Möte på fredag – agenda ✓",
            "text": "Hej Åsa,\nse bilagan.\n",
            "html": "<p>Hej <b>Åsa</b></p>",
            "attachments": [
                {
                    "filename": "Agenda fredag.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                }
            ],
        },
        headers=user.headers,
    ).get_json()
    headers = {**user.headers, "Idempotency-Key": "k-1"}
    first = client.post(f"/api/compose/{draft['id']}/send", headers=headers)
    second = client.post(f"/api/compose/{draft['id']}/send", headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.get_json()["id"] == second.get_json()["id"]
    outbox_id = first.get_json()["id"]

    running.start("worker")

    def done():
        body = client.get(f"/api/outbox/{outbox_id}", headers=user.headers).get_json()
        return body if (body["state"], body["sent_copy"]) == ("sent", "done") else None

    body = wait_for(done, timeout=60, interval=0.3)
    assert body["attempts"] == 1 and body["smtp_reply"].startswith("250")
    (got,) = arrived(recipient, body["message_id"])
    assert str(got["Subject"]) == "Möte på fredag – agenda ✓"
    assert got["To"].addresses[0].display_name == "Åsa Öberg"
    assert got.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hej Åsa,\nse bilagan.\n"
    assert "<b>Åsa</b>" in got.get_body(("html",)).get_content()
    (attachment,) = got.iter_attachments()
    assert (attachment.get_filename(), attachment.get_content()) == ("Agenda fredag.pdf", pdf)
    time.sleep(1)  # anything sent twice would be here by now
    assert len(arrived(recipient, body["message_id"])) == 1
    copies = [m for m in inbox(sender, "Sent") if m["Message-ID"] == body["message_id"]]
    assert len(copies) == 1
    assert sent_attempts(client) == counted + 1  # /metrics counts what the worker did


def test_postfix_down_is_retried_by_the_worker_then_sent_once(setting, stack_control):
    env, ctx, user, sender, recipient, running = setting
    sessions = ctx.sessions
    account_id = make_account(ctx, user.tenant_id, sender)
    client = api_client(env)
    draft = client.post(
        "/api/compose",
        json={"account_id": account_id, "to": [recipient.email], "text": "later"},
        headers=user.headers,
    ).get_json()
    stack_control.stop_service("postfix")
    try:
        outbox_id = client.post(f"/api/compose/{draft['id']}/send", headers=user.headers)
        outbox_id = outbox_id.get_json()["id"]
        running.start("worker")
        wait_for(lambda: outbox_entry(sessions, outbox_id).attempts >= 2, timeout=60)
        assert outbox_entry(sessions, outbox_id).state in ("queued", "sending")
    finally:
        stack_control.start_service("postfix")
    sent = wait_for(
        lambda: (e := outbox_entry(sessions, outbox_id)).state == "sent" and e, timeout=90
    )
    arrived(recipient, sent.message_id)
    time.sleep(1)
    assert len(arrived(recipient, sent.message_id)) == 1


def test_a_worker_killed_after_the_server_accepted_never_sends_twice(setting, stack):
    env, ctx, user, sender, recipient, running = setting
    sessions = ctx.sessions
    with SmtpPeer(relay=relay_to(stack.host, stack.smtp_port)) as peer:
        peer.scripts = ["hold_after_dot"]
        smtp = ServerFields("127.0.0.1", peer.port, Security.NONE, sender.email, "any")
        # The peer is a server of this test's own: the account's context and the workers
        # allow it (the host policy refuses every other loopback port).
        allowed = allowing(env, f"127.0.0.1:{peer.port}")["ALLOWED_PRIVATE_HOSTS"]
        peer_ctx = ServiceContext.build(
            Settings.from_mapping({**env, "ALLOWED_PRIVATE_HOSTS": allowed})
        )
        try:
            account_id = make_account(peer_ctx, user.tenant_id, sender, smtp=smtp)
        finally:
            peer_ctx.close()
        client = api_client(env)
        draft = client.post(
            "/api/compose",
            json={"account_id": account_id, "to": [recipient.email], "text": "exactly once"},
            headers=user.headers,
        ).get_json()
        outbox_id = client.post(f"/api/compose/{draft['id']}/send", headers=user.headers)
        outbox_id = outbox_id.get_json()["id"]
        worker = running.start("worker", ALLOWED_PRIVATE_HOSTS=allowed)
        # The server has the whole message (relayed to the recipient's mailbox) and has not
        # replied yet: kill the worker and its work-horse now.
        assert peer.holding.wait(60)
        for pid in [*descendants(worker.pid), worker.pid]:
            os.kill(pid, signal.SIGKILL)
        worker.wait()
        peer.release.set()

        running.start("worker", ALLOWED_PRIVATE_HOSTS=allowed)  # settles what the dead one left
        settled = wait_for(
            lambda: (e := outbox_entry(sessions, outbox_id)).state == "uncertain" and e,
            timeout=60,
        )
        assert settled.attempts == 1 and "may have accepted" in settled.last_error
        time.sleep(2)  # a retry the new worker might make would reach the peer by now
        assert peer.sessions == 1 and len(peer.received) == 1
    assert len(arrived(recipient, settled.message_id)) == 1
    assert outbox_entry(sessions, outbox_id).state == "uncertain"

    # The user looked and found it was delivered.
    resolved = client.post(
        f"/api/outbox/{outbox_id}/resolve", json={"outcome": "sent"}, headers=user.headers
    )
    assert resolved.status_code == 200 and resolved.get_json()["state"] == "sent"
