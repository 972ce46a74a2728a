"""Per-tenant limits: GET /api/usage, the account quota and the storage quota.

The storage total is a running sum kept by PostgreSQL's triggers; these tests hold it against
a full recount after everything that stores or removes bytes (syncs, expunges, drafts, sends,
a deleted account), on the real Dovecot and Postfix.
"""

from __future__ import annotations

import base64
import threading

import pytest
from sqlalchemy import func, select

from app.models import Account, Draft, OutboxEntry
from app.services import usage
from tests.mailbox import add_account, message
from tests.support import run_cli

pytestmark = pytest.mark.usefixtures("empty_queues")


def app_with(env, **settings):
    from app import create_app

    app = create_app({**env, **{k: str(v) for k, v in settings.items()}})
    app.config["TESTING"] = True
    return app


def draft_body(account_id: int, text: str = "Shall we?", **fields) -> dict:
    return {"account_id": account_id, "to": ["bob@example.test"], "text": text, **fields}


def attachment(data: bytes) -> dict:
    return {
        "filename": "a.bin",
        "content_type": "application/octet-stream",
        "content_base64": base64.b64encode(data).decode(),
    }


def totals(db, tenant_id: int) -> tuple[int, int]:
    """(running total, full recount) of the tenant's stored bytes."""
    db.rollback()
    return usage.storage_bytes(db, tenant_id), usage.recount(db, tenant_id)


def test_usage_reports_the_callers_tenant_and_its_limits(
    env, migrated, tenant_a, tenant_b, ctx, mailbox, make_syncer
):
    mailbox.append("INBOX", message(body="B's mail, counted for B only"))
    make_syncer().sync_account(add_account(ctx, tenant_b.tenant_id, mailbox))
    client = app_with(
        env,
        TENANT_MAX_ACCOUNTS=7,
        TENANT_MAX_STORAGE_BYTES=123456789,
        TENANT_MAX_CONCURRENT_JOBS=3,
        VERIFY_MAX_IN_FLIGHT=5,
    ).test_client()

    mine = client.get("/api/usage", headers=tenant_a.headers)
    assert mine.status_code == 200
    assert mine.get_json() == {
        "accounts": 0,
        "storage_bytes": 0,
        "limits": {
            "accounts": 7,
            "storage_bytes": 123456789,
            "concurrent_jobs": 3,
            "verify_in_flight": 5,
        },
    }
    theirs = client.get("/api/usage", headers=tenant_b.headers).get_json()
    assert theirs["accounts"] == 1 and theirs["storage_bytes"] > 0
    assert client.get("/api/usage").status_code == 401
    spoofed = client.get("/api/usage", headers={**tenant_a.headers, "X-Tenant-ID": tenant_b.slug})
    assert spoofed.status_code == 403


def test_one_account_over_the_limit_is_refused(env, migrated, tenant_a, mail_account_body, db):
    client = app_with(env, TENANT_MAX_ACCOUNTS=2).test_client()
    for _ in range(2):
        response = client.post("/api/accounts", json=mail_account_body(), headers=tenant_a.headers)
        assert response.status_code == 201
    refused = client.post(
        "/api/accounts", json=mail_account_body(verify=True), headers=tenant_a.headers
    )
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    assert "TENANT_MAX_ACCOUNTS" in refused.get_json()["error"]["message"]
    assert client.get("/api/usage", headers=tenant_a.headers).get_json()["accounts"] == 2

    # Deleting one makes room again.
    first = client.get("/api/accounts", headers=tenant_a.headers).get_json()["items"][0]
    assert (
        client.delete(f"/api/accounts/{first['id']}", headers=tenant_a.headers).status_code == 204
    )
    again = client.post("/api/accounts", json=mail_account_body(), headers=tenant_a.headers)
    assert again.status_code == 201


def test_parallel_creates_at_the_limit_never_pass_it_together(
    env, migrated, tenant_a, mail_account_body, db
):
    app = app_with(env, TENANT_MAX_ACCOUNTS=3)
    start = threading.Barrier(12)
    statuses: list[int] = []

    def create() -> None:
        client = app.test_client()
        start.wait(30)
        response = client.post("/api/accounts", json=mail_account_body(), headers=tenant_a.headers)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [201] * 3 + [403] * 9
    count = select(func.count()).where(Account.tenant_id == tenant_a.tenant_id)
    assert db.scalar(count) == 3


def test_the_running_total_equals_a_recount_through_syncs_drafts_sends_and_deletes(
    env, migrated, tenant_a, ctx, mailbox, make_syncer, db, tmp_path
):
    client = app_with(env).test_client()
    tenant = tenant_a.tenant_id
    big = b"\x00\x01 attachment bytes " * 4000
    mailbox.append("INBOX", message(subject="one", attachments=[("a.bin", "a/b", big)]))
    mailbox.append("INBOX", message(subject="two"))
    account_id = add_account(ctx, tenant, mailbox)
    sync = make_syncer().sync_account

    sync(account_id)
    running, full = totals(db, tenant)
    assert running == full > len(big)
    # The same message in a second folder is stored once: the total does not move.
    with mailbox.client() as c:
        c.create_folder("Kept")
        c.select_folder("INBOX")
        c.copy(c.search("ALL"), "Kept")
    sync(account_id)
    assert totals(db, tenant) == (running, full)

    # Expunged on the server everywhere, then a resync: its bytes leave the total.
    with mailbox.client() as c:
        for folder in ("INBOX", "Kept"):
            c.select_folder(folder)
            c.delete_messages(c.search(["SUBJECT", "one"]))
            c.expunge()
    before = running
    sync(account_id)
    running, full = totals(db, tenant)
    assert running == full <= before - len(big)  # the sync's raw GC dropped its bytes

    created = client.post(
        "/api/compose",
        json=draft_body(account_id, attachments=[attachment(b"x" * 5000)]),
        headers=tenant_a.headers,
    ).get_json()
    assert totals(db, tenant)[0] == totals(db, tenant)[1] >= full + 5000
    updated = client.post(
        "/api/compose/draft",
        json=draft_body(account_id, "shorter", id=created["id"], version=1),
        headers=tenant_a.headers,
    )
    assert updated.status_code == 200
    running, full = totals(db, tenant)
    assert running == full
    other = client.post("/api/compose", json=draft_body(account_id), headers=tenant_a.headers)
    assert (
        client.delete(
            f"/api/compose/{other.get_json()['id']}", headers=tenant_a.headers
        ).status_code
        == 204
    )
    assert totals(db, tenant) == (running, full)

    # Sent through the real Postfix by a real worker, with its copy in Sent, then synced.
    sent = client.post(f"/api/compose/{created['id']}/send", headers=tenant_a.headers)
    assert sent.status_code == 202
    mime = db.scalar(
        select(func.octet_length(OutboxEntry.mime)).where(OutboxEntry.id == sent.get_json()["id"])
    )
    running, full = totals(db, tenant)
    assert running == full and mime > 0
    result = run_cli(["worker", "--burst"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        db.scalar(select(OutboxEntry.state).where(OutboxEntry.id == sent.get_json()["id"]))
        == "sent"
    )
    sync(account_id)
    running, full = totals(db, tenant)
    assert running == full

    # The account goes, and everything it stored with it (foreign keys cascade).
    assert client.delete(f"/api/accounts/{account_id}", headers=tenant_a.headers).status_code == 204
    assert totals(db, tenant) == (0, 0)


def test_a_draft_or_send_over_the_storage_quota_is_refused_and_nothing_is_lost(
    env, migrated, tenant_a, account_id, db
):
    # The quota: room for the first draft and little more.
    client = app_with(env, TENANT_MAX_STORAGE_BYTES=20_000).test_client()
    headers = tenant_a.headers
    first = client.post(
        "/api/compose",
        json=draft_body(account_id, attachments=[attachment(b"a" * 15_000)]),
        headers=headers,
    )
    assert first.status_code == 201
    first = first.get_json()

    too_big = client.post(
        "/api/compose",
        json=draft_body(account_id, attachments=[attachment(b"b" * 6_000)]),
        headers=headers,
    )
    assert too_big.status_code == 403
    error = too_big.get_json()["error"]
    assert error["code"] == "quota_exceeded" and "TENANT_MAX_STORAGE_BYTES" in error["message"]
    grown = client.post(
        "/api/compose/draft",
        json=draft_body(
            account_id, id=first["id"], version=1, attachments=[attachment(b"c" * 21_000)]
        ),
        headers=headers,
    )
    assert grown.status_code == 403 and grown.get_json()["error"]["code"] == "quota_exceeded"
    kept = client.get(f"/api/compose/{first['id']}", headers=headers).get_json()
    assert kept["version"] == 1
    assert base64.b64decode(kept["attachments"][0]["content_base64"]) == b"a" * 15_000

    # Sending would store the built message beside the draft: over the quota, refused, and
    # the draft stays a draft with no outbox entry.
    refused = client.post(f"/api/compose/{first['id']}/send", headers=headers)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "quota_exceeded"
    assert client.get(f"/api/compose/{first['id']}", headers=headers).get_json()["state"] == "draft"
    assert db.scalar(select(func.count()).where(OutboxEntry.tenant_id == tenant_a.tenant_id)) == 0

    # Shrinking is always allowed, and then there is room to send.
    smaller = client.post(
        "/api/compose/draft",
        json=draft_body(
            account_id, id=first["id"], version=1, attachments=[attachment(b"d" * 100)]
        ),
        headers=headers,
    )
    assert smaller.status_code == 200
    assert client.post(f"/api/compose/{first['id']}/send", headers=headers).status_code == 202
    running, full = totals(db, tenant_a.tenant_id)
    assert running == full <= 20_000
    assert db.scalar(select(Draft.size).where(Draft.id == first["id"])) < 1000


def test_parallel_sends_at_the_storage_quota_never_pass_it_together(
    env, migrated, tenant_a, account_id, db
):
    # Identical drafts: every built message is about as large as the first one sent.
    roomy = app_with(env).test_client()
    body = draft_body(account_id, attachments=[attachment(b"e" * 3_000)])
    ids = [
        roomy.post("/api/compose", json=body, headers=tenant_a.headers).get_json()["id"]
        for _ in range(11)
    ]
    assert roomy.post(f"/api/compose/{ids.pop()}/send", headers=tenant_a.headers).status_code == 202
    mime = db.scalar(
        select(func.octet_length(OutboxEntry.mime)).where(
            OutboxEntry.tenant_id == tenant_a.tenant_id
        )
    )
    used, _ = totals(db, tenant_a.tenant_id)
    # Room for three more sends, not four, whatever their order.
    app = app_with(env, TENANT_MAX_STORAGE_BYTES=used + 3 * mime + mime // 2)
    start = threading.Barrier(len(ids))
    statuses: list[int] = []

    def send(draft_id: int) -> None:
        client = app.test_client()
        start.wait(30)
        response = client.post(f"/api/compose/{draft_id}/send", headers=tenant_a.headers)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=send, args=(draft_id,)) for draft_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [202] * 3 + [403] * (len(ids) - 3)
    count = select(func.count()).where(OutboxEntry.tenant_id == tenant_a.tenant_id)
    assert db.scalar(count) == 4
    running, full = totals(db, tenant_a.tenant_id)
    assert running == full <= used + 3 * mime + mime // 2


def test_over_quota_says_when_new_mail_must_be_stored_headers_only(
    ctx, tenant_a, mailbox, make_syncer, db
):
    from dataclasses import replace

    mailbox.append("INBOX", message(body="some bytes " * 100))
    make_syncer().sync_account(add_account(ctx, tenant_a.tenant_id, mailbox))
    used = usage.storage_bytes(db, tenant_a.tenant_id)
    assert used > 1000
    for limit, over in ((used + 1, False), (used, True), (used - 1, True), (10**12, False)):
        settings = replace(ctx.settings, tenant_max_storage_bytes=limit)
        assert usage.over_quota(db, settings, tenant_a.tenant_id) is over, limit
