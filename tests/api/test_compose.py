"""Drafts and the outbox through the API: validation, versions, idempotency, tenancy.

Delivery itself (SMTP, retries, uncertain sends, the Sent copy) is in tests/services/test_outbox.py
and tests/workers/test_send_jobs.py.
"""

from __future__ import annotations

import base64
import email
from email import policy

import pytest
from sqlalchemy import func, select, update

from app.models import OutboxEntry
from tests.mailbox import message, stored

# Sends are queued for a worker; none runs here, and none is left for later tests.
pytestmark = pytest.mark.usefixtures("empty_queues")


def draft_body(account_id: int, /, **fields) -> dict:
    return {
        "account_id": account_id,
        "to": ["Bob Example <bob@example.test>"],
        "subject": "Lunch?",
        "text": "Shall we?",
        **fields,
    }


def outbox_count(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(OutboxEntry))


@pytest.fixture
def draft(client, tenant_a, account_id) -> dict:
    response = client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_draft_is_created_read_updated_and_deleted(client, tenant_a, account_id):
    attachment = {
        "filename": "notes.txt",
        "content_type": "text/plain",
        "content_base64": base64.b64encode(b"hello\x00world").decode(),
    }
    created = client.post(
        "/api/compose",
        json=draft_body(account_id, cc=["carol@example.test"], attachments=[attachment]),
        headers=tenant_a.headers,
    )
    assert created.status_code == 201
    body = created.get_json()
    assert created.headers["Location"] == f"/api/compose/{body['id']}"
    assert (body["version"], body["state"], body["outbox_id"]) == (1, "draft", None)
    assert body["to"] == ["Bob Example <bob@example.test>"]
    assert body["attachments"] == [{**attachment, "size": 11}]

    read = client.get(f"/api/compose/{body['id']}", headers=tenant_a.headers).get_json()
    assert read == body

    updated = client.post(
        "/api/compose/draft",
        json=draft_body(account_id, id=body["id"], version=1, subject="Dinner?"),
        headers=tenant_a.headers,
    )
    assert updated.status_code == 200
    assert (updated.get_json()["version"], updated.get_json()["subject"]) == (2, "Dinner?")
    assert updated.get_json()["attachments"] == []  # an update replaces the whole content

    assert client.delete(f"/api/compose/{body['id']}", headers=tenant_a.headers).status_code == 204
    assert client.get(f"/api/compose/{body['id']}", headers=tenant_a.headers).status_code == 404


def test_save_without_id_creates(client, tenant_a, account_id):
    response = client.post(
        "/api/compose/draft", json=draft_body(account_id), headers=tenant_a.headers
    )
    assert response.status_code == 201
    assert response.get_json()["version"] == 1


def test_a_stale_version_is_a_conflict_and_changes_nothing(client, tenant_a, account_id, draft):
    first = client.post(
        "/api/compose/draft",
        json=draft_body(account_id, id=draft["id"], version=1, subject="first writer"),
        headers=tenant_a.headers,
    )
    assert first.status_code == 200
    stale = client.post(
        "/api/compose/draft",
        json=draft_body(account_id, id=draft["id"], version=1, subject="second writer"),
        headers=tenant_a.headers,
    )
    assert stale.status_code == 409
    assert "version 2" in stale.get_json()["error"]["message"]
    current = client.get(f"/api/compose/{draft['id']}", headers=tenant_a.headers).get_json()
    assert (current["subject"], current["version"]) == ("first writer", 2)
    missing = client.post(
        "/api/compose/draft",
        json=draft_body(account_id, id=draft["id"]),
        headers=tenant_a.headers,
    )
    assert missing.status_code == 422
    assert missing.get_json()["error"]["details"][0]["field"] == "version"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": ["not an address"]}, "to.0"),
        ({"to": ["bob@example.test, eve@example.test"]}, "to.0"),
        ({"cc": ["Bob <bob@@example.test>"]}, "cc.0"),
        ({"to": ["bob@example.test\r\nBcc: eve@example.test"]}, "to.0"),
        ({"to": ["Bob\nBcc: eve@example.test <bob@example.test>"]}, "to.0"),
        ({"bcc": ['"Eve\r\n" <eve@example.test>']}, "bcc.0"),
        ({"subject": "hi\r\nBcc: eve@example.test"}, "subject"),
        ({"subject": "hi\nthere"}, "subject"),
        ({"subject": "nul\x00"}, "subject"),
        (
            {"attachments": [{"filename": "a\r\n.txt", "content_base64": "aGk="}]},
            "attachments.0.filename",
        ),
        (
            {
                "attachments": [
                    {
                        "filename": "a.txt",
                        "content_type": "text/plain\r\nX: y",
                        "content_base64": "",
                    }
                ]
            },
            "attachments.0.content_type",
        ),
        (
            {"attachments": [{"filename": "a.txt", "content_base64": "not base64!"}]},
            "attachments.0.content_base64",
        ),
        ({"account_id": "1"}, "account_id"),
        ({"in_reply_to": 2**63}, "in_reply_to"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_nothing_is_stored(
    client, tenant_a, account_id, db, fields, field
):
    before = outbox_count(db)
    response = client.post(
        "/api/compose", json=draft_body(account_id, **fields), headers=tenant_a.headers
    )
    assert response.status_code == 422, response.get_json()
    assert field in [d["field"] for d in response.get_json()["error"]["details"]]
    assert outbox_count(db) == before


def test_another_tenants_account_or_message_is_404(client, tenant_a, tenant_b, ctx, stack):
    from tests.mailbox import add_account

    class Nobody:  # never connected to; its servers are the stack's (the policy allows them)
        host, imap_port, submission_port = stack.host, stack.imap_port, stack.submission_port
        email, password = "nobody@example.test", "x"

    others = add_account(ctx, tenant_b.tenant_id, Nobody)
    response = client.post("/api/compose", json=draft_body(others), headers=tenant_a.headers)
    assert response.status_code == 404
    assert f"Account {others}" in response.get_json()["error"]["message"]
    missing = client.post(
        "/api/compose", json=draft_body(others, in_reply_to=2**62), headers=tenant_b.headers
    )
    assert missing.status_code == 404


def test_a_message_over_the_size_limit_is_413(env, migrated, tenant_a, account_id):
    from app import create_app

    client = create_app({**env, "MAX_MESSAGE_BYTES": "2048"}).test_client()
    big = {"filename": "big.bin", "content_base64": base64.b64encode(b"x" * 3000).decode()}
    response = client.post(
        "/api/compose", json=draft_body(account_id, attachments=[big]), headers=tenant_a.headers
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_sending_queues_once_and_the_draft_becomes_read_only(
    client, tenant_a, draft, db, redis_client
):
    from rq.job import Job

    from app.services.outbox import send_job_id

    sent = client.post(f"/api/compose/{draft['id']}/send", headers=tenant_a.headers)
    assert sent.status_code == 202
    entry = sent.get_json()
    # The job names its tenant: a worker takes the tenant's slot without looking it up.
    job = Job.fetch(send_job_id(entry["id"], 0), connection=redis_client)
    assert job.meta["tenant_id"] == tenant_a.tenant_id
    assert (entry["state"], entry["attempts"], entry["outbox_id"]) == ("queued", 0, entry["id"])
    assert entry["message_id"].startswith("<") and entry["message_id"].endswith(">")
    assert sent.headers["Location"] == f"/api/outbox/{entry['id']}"

    again = client.post(f"/api/compose/{draft['id']}/send", headers=tenant_a.headers)
    assert again.status_code == 409
    assert f"outbox entry {entry['id']}" in again.get_json()["error"]["message"]

    read = client.get(f"/api/compose/{draft['id']}", headers=tenant_a.headers).get_json()
    assert (read["state"], read["outbox_id"]) == ("sent", entry["id"])
    edit = client.post(
        "/api/compose/draft",
        json=draft_body(draft["account_id"], id=draft["id"], version=1),
        headers=tenant_a.headers,
    )
    assert edit.status_code == 409
    assert client.delete(f"/api/compose/{draft['id']}", headers=tenant_a.headers).status_code == 409
    got = client.get(f"/api/outbox/{entry['id']}", headers=tenant_a.headers).get_json()
    assert got == entry

    # The stored bytes are the message: our Message-ID and Date, no Bcc header.
    db.expire_all()
    mime = db.get(OutboxEntry, entry["id"]).mime
    parsed = email.message_from_bytes(mime, policy=policy.default)
    assert parsed["Message-ID"] == entry["message_id"]
    assert parsed["Date"] is not None and parsed["Subject"] == "Lunch?"


def test_an_idempotency_key_returns_the_same_entry(client, tenant_a, account_id, db):
    drafts = [
        client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
        for _ in range(2)
    ]
    first, second = (d.get_json()["id"] for d in drafts)
    headers = {**tenant_a.headers, "Idempotency-Key": "order-4711"}
    before = outbox_count(db)
    one = client.post(f"/api/compose/{first}/send", headers=headers)
    two = client.post(f"/api/compose/{first}/send", headers=headers)
    assert (one.status_code, two.status_code) == (202, 202)
    assert one.get_json()["id"] == two.get_json()["id"]
    assert outbox_count(db) == before + 1
    other = client.post(f"/api/compose/{second}/send", headers=headers)
    assert other.status_code == 409
    assert f"draft {first}" in other.get_json()["error"]["message"]
    bad = client.post(
        f"/api/compose/{second}/send", headers={**tenant_a.headers, "Idempotency-Key": " x"}
    )
    assert bad.status_code == 422


def test_keys_are_per_tenant_and_expire_after_a_day(
    client, tenant_a, tenant_b, account_id, ctx, db_sessionmaker, mailbox
):
    from tests.mailbox import add_account

    b_account = add_account(ctx, tenant_b.tenant_id, mailbox)
    key = {"Idempotency-Key": "same-key"}
    a_draft = client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
    b_draft = client.post("/api/compose", json=draft_body(b_account), headers=tenant_b.headers)
    a_sent = client.post(
        f"/api/compose/{a_draft.get_json()['id']}/send", headers={**tenant_a.headers, **key}
    )
    b_sent = client.post(
        f"/api/compose/{b_draft.get_json()['id']}/send", headers={**tenant_b.headers, **key}
    )
    assert (a_sent.status_code, b_sent.status_code) == (202, 202)
    assert a_sent.get_json()["id"] != b_sent.get_json()["id"]

    with db_sessionmaker() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == a_sent.get_json()["id"])
            .values(created_at=func.now() - func.make_interval(0, 0, 0, 0, 25))
        )
        session.commit()
    later = client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
    reused = client.post(
        f"/api/compose/{later.get_json()['id']}/send", headers={**tenant_a.headers, **key}
    )
    assert reused.status_code == 202
    assert reused.get_json()["id"] != a_sent.get_json()["id"]


def test_a_draft_without_recipients_cannot_be_sent(client, tenant_a, account_id, db):
    response = client.post(
        "/api/compose", json=draft_body(account_id, to=[]), headers=tenant_a.headers
    )
    before = outbox_count(db)
    sent = client.post(f"/api/compose/{response.get_json()['id']}/send", headers=tenant_a.headers)
    assert sent.status_code == 422
    assert outbox_count(db) == before


def test_a_reply_threads_and_defaults_its_recipient_and_subject(
    client, tenant_a, account_id, mailbox, make_syncer, db_sessionmaker, db
):
    raw = message(subject="Quarterly plan", sender="Dora Díaz <dora@example.test>")
    mailbox.append("INBOX", raw)
    make_syncer().sync_account(account_id)
    (original,) = stored(db_sessionmaker, account_id)["INBOX"].values()
    reply = client.post(
        "/api/compose",
        json={"account_id": account_id, "in_reply_to": original.id, "text": "Agreed."},
        headers=tenant_a.headers,
    ).get_json()
    assert reply["to"] == ["Dora Díaz <dora@example.test>"]
    assert reply["subject"] == "Re: Quarterly plan"
    assert reply["in_reply_to"] == original.id
    entry = client.post(f"/api/compose/{reply['id']}/send", headers=tenant_a.headers).get_json()
    db.expire_all()
    parsed = email.message_from_bytes(db.get(OutboxEntry, entry["id"]).mime, policy=policy.default)
    assert parsed["In-Reply-To"] == f"<{original.message_id_header}>"
    assert parsed["References"].split()[-1] == f"<{original.message_id_header}>"
    assert "Dora" in parsed["To"]


def test_the_outbox_lists_by_state_and_resolves_only_what_it_may(
    client, tenant_a, draft, db_sessionmaker
):
    entry = client.post(f"/api/compose/{draft['id']}/send", headers=tenant_a.headers).get_json()
    url = f"/api/outbox/{entry['id']}/resolve"
    early = client.post(url, json={"outcome": "sent"}, headers=tenant_a.headers)
    assert early.status_code == 409  # queued: nothing to settle

    with db_sessionmaker() as session:
        session.execute(
            update(OutboxEntry).where(OutboxEntry.id == entry["id"]).values(state="uncertain")
        )
        session.commit()
    listed = client.get("/api/outbox?state=uncertain", headers=tenant_a.headers).get_json()
    assert [e["id"] for e in listed["items"]] == [entry["id"]]
    for query in ("state=lost", "state=sent&state=failed", "bogus=1", "cursor=x1"):
        response = client.get(f"/api/outbox?{query}", headers=tenant_a.headers)
        assert response.status_code == 422, query
    bad = client.post(url, json={"outcome": "maybe"}, headers=tenant_a.headers)
    assert bad.status_code == 422

    settled = client.post(url, json={"outcome": "failed"}, headers=tenant_a.headers)
    assert settled.status_code == 200
    assert settled.get_json()["state"] == "failed"
    assert client.post(url, json={"outcome": "sent"}, headers=tenant_a.headers).status_code == 409
    retried = client.post(url, json={"outcome": "retry"}, headers=tenant_a.headers)
    assert retried.get_json()["state"] == "queued"


def test_another_tenants_drafts_and_outbox_are_404(client, tenant_a, tenant_b, draft):
    entry = client.post(f"/api/compose/{draft['id']}/send", headers=tenant_a.headers).get_json()
    for method, url in [
        ("get", f"/api/compose/{draft['id']}"),
        ("delete", f"/api/compose/{draft['id']}"),
        ("post", f"/api/compose/{draft['id']}/send"),
        ("get", f"/api/outbox/{entry['id']}"),
    ]:
        assert getattr(client, method)(url, headers=tenant_b.headers).status_code == 404
    resolve = client.post(
        f"/api/outbox/{entry['id']}/resolve", json={"outcome": "sent"}, headers=tenant_b.headers
    )
    assert resolve.status_code == 404
    update_ = client.post(
        "/api/compose/draft",
        json=draft_body(draft["account_id"], id=draft["id"], version=1),
        headers=tenant_b.headers,
    )
    assert update_.status_code == 404
    listed = client.get("/api/outbox", headers=tenant_b.headers).get_json()
    assert entry["id"] not in [e["id"] for e in listed["items"]]


def test_redis_failing_between_the_commit_and_the_enqueue_is_a_202_and_the_retry_enqueues(
    env, migrated, tenant_a, account_id, db, redis_client, monkeypatch
):
    """Redis goes away after the outbox entry is committed and before its job is enqueued
    (the proxy in front of it is switched off at the first enqueue): the client is told 202
    (the entry exists), and its retry with the same key, once Redis is back, enqueues it."""
    from urllib.parse import urlsplit

    from rq.job import Job

    from app import create_app
    from app.jobs import Jobs
    from app.services.outbox import send_job_id
    from tests.support import TcpProxy

    redis = urlsplit(env["REDIS_URL"])
    proxy = TcpProxy((redis.hostname, redis.port))
    proxy.start()
    proxied = redis._replace(netloc=redis.netloc.replace(f":{redis.port}", f":{proxy.port}"))
    client = create_app(dict(env, REDIS_URL=proxied.geturl())).test_client()
    draft = client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
    draft_id = draft.get_json()["id"]

    enqueue = Jobs.enqueue

    def redis_gone_first(self, *args, **kwargs):
        proxy.stop()  # every try of the accept path's enqueue meets a Redis that is gone
        return enqueue(self, *args, **kwargs)

    monkeypatch.setattr(Jobs, "enqueue", redis_gone_first)
    headers = {**tenant_a.headers, "Idempotency-Key": "redis-gone-after-commit"}
    try:
        first = client.post(f"/api/compose/{draft_id}/send", headers=headers)
    finally:
        monkeypatch.undo()
        proxy.start()
    assert first.status_code == 202, first.get_json()
    entry_id = first.get_json()["id"]
    assert db.get(OutboxEntry, entry_id).state == "queued"
    jobs = Jobs(redis_client)
    assert jobs.state(send_job_id(entry_id, 0)) is None  # Redis never got the job

    again = client.post(f"/api/compose/{draft_id}/send", headers=headers)
    proxy.stop()
    assert (again.status_code, again.get_json()["id"]) == (202, entry_id)
    assert jobs.state(send_job_id(entry_id, 0)) == "queued"
    job = Job.fetch(send_job_id(entry_id, 0), connection=redis_client)
    assert job.meta["tenant_id"] == tenant_a.tenant_id
