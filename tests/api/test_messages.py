"""Reading messages through the API, and changing them on the real Dovecot (write-back)."""

from __future__ import annotations

import email
from datetime import datetime, timedelta, timezone

import pytest

from app.services.messages import apply_changes
from tests.mailbox import message, stored, wire_log

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
HOSTILE_HTML = (
    '<p onclick="steal()">Hi <b>there</b><script>alert(1)</script>'
    '<a href="javascript:alert(2)">click</a> <a href="https://example.org/">fine</a>'
    '<img src="https://tracker.example.net/pixel.gif" alt="pixel"></p>'
)


@pytest.fixture
def synced(client, tenant_a, account_id, mailbox, make_syncer, db_sessionmaker):
    """A synced mailbox: INBOX with plain, HTML and attachment messages; its message ids."""
    day = datetime(2026, 3, 1, tzinfo=timezone.utc)
    mailbox.append("INBOX", message(subject="oldest", body="first", date=day))
    mailbox.append(
        "INBOX",
        message(
            subject="hostile html",
            body="plain part",
            html=HOSTILE_HTML,
            date=day + timedelta(days=1),
        ),
    )
    mailbox.append(
        "INBOX",
        message(
            subject="with pdf",
            body="see attached",
            attachments=[("Résumé naïve.pdf", "application/pdf", PDF)],
            date=day + timedelta(days=2),
        ),
    )
    make_syncer().sync_account(account_id)
    rows = stored(db_sessionmaker, account_id)["INBOX"]
    return {m.subject: m.id for m in rows.values()}


def test_a_folder_lists_newest_first_with_a_cursor(client, tenant_a, account_id, synced):
    page = client.get(f"/api/accounts/{account_id}/messages?limit=2", headers=tenant_a.headers)
    assert page.status_code == 200
    first = page.get_json()
    assert [m["subject"] for m in first["items"]] == ["with pdf", "hostile html"]
    rest = client.get(
        f"/api/accounts/{account_id}/messages?limit=2&cursor={first['next_cursor']}",
        headers=tenant_a.headers,
    ).get_json()
    assert [m["subject"] for m in rest["items"]] == ["oldest"]
    assert rest["next_cursor"] is None
    summary = first["items"][0]
    assert summary["folder"] == "INBOX"
    assert summary["from"] == {"name": "Sender", "email": "sender@example.test"}
    assert summary["flags"] == {"seen": False, "flagged": False, "answered": False, "draft": False}
    assert summary["has_attachments"] is True
    by_role = client.get(
        f"/api/accounts/{account_id}/messages?folder=inbox&limit=1", headers=tenant_a.headers
    ).get_json()
    assert by_role["items"][0]["id"] == summary["id"]
    missing = client.get(
        f"/api/accounts/{account_id}/messages?folder=Nope", headers=tenant_a.headers
    )
    assert missing.status_code == 404


def test_html_comes_back_without_scripts_handlers_or_remote_loads(client, tenant_a, synced):
    body = client.get(f"/api/messages/{synced['hostile html']}", headers=tenant_a.headers)
    assert body.status_code == 200
    html = body.get_json()["html"]
    assert "<b>there</b>" in html
    for hostile in ("<script", "alert(1)", "onclick", "javascript:", "tracker.example.net"):
        assert hostile not in html, hostile
    assert 'href="https://example.org/"' in html
    asked = client.get(
        f"/api/messages/{synced['hostile html']}?remote_images=true", headers=tenant_a.headers
    ).get_json()["html"]
    assert "https://tracker.example.net/pixel.gif" in asked
    assert "<script" not in asked and "onclick" not in asked
    detail = body.get_json()
    assert detail["text"].strip() == "plain part"
    assert ["Subject", "hostile html"] in [list(h) for h in detail["headers"]]
    assert detail["parse_error"] is None


def test_raw_is_byte_identical_to_dovecots_copy(client, tenant_a, synced, mailbox):
    raw = client.get(f"/api/messages/{synced['with pdf']}/raw", headers=tenant_a.headers)
    assert raw.status_code == 200
    assert raw.mimetype == "message/rfc822"
    # Saved, never rendered by a browser, under a name of ours.
    assert raw.headers["X-Content-Type-Options"] == "nosniff"
    assert raw.headers["Content-Disposition"] == (
        f'attachment; filename="message-{synced["with pdf"]}.eml"; '
        f"filename*=UTF-8''message-{synced['with pdf']}.eml"
    )
    with mailbox.client() as imap:
        imap.select_folder("INBOX", readonly=True)
        [uid] = imap.search(["SUBJECT", "with pdf"])
        server_copy = imap.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
    assert raw.data == server_copy


def test_an_attachment_is_byte_identical_to_what_was_attached(client, tenant_a, synced):
    detail = client.get(f"/api/messages/{synced['with pdf']}", headers=tenant_a.headers).get_json()
    assert detail["attachments"] == [
        {
            "index": 0,
            "filename": "Résumé naïve.pdf",
            "content_type": "application/pdf",
            "size": len(PDF),
        }
    ]
    got = client.get(f"/api/messages/{synced['with pdf']}/attachments/0", headers=tenant_a.headers)
    assert got.status_code == 200
    assert got.data == PDF
    assert got.mimetype == "application/pdf"
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="R_sum_ na_ve.pdf"')
    assert "filename*=UTF-8''R%C3%A9sum%C3%A9%20na%C3%AFve.pdf" in disposition
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert (
        client.get(
            f"/api/messages/{synced['with pdf']}/attachments/1", headers=tenant_a.headers
        ).status_code
        == 404
    )


def test_flags_are_written_to_the_server_and_survive_the_next_sync(
    ctx, client, tenant_a, synced, account_id, mailbox, make_syncer, db_sessionmaker, env
):
    target = synced["oldest"]

    def unread() -> int:
        folders = client.get(f"/api/accounts/{account_id}/folders", headers=tenant_a.headers)
        return next(f for f in folders.get_json()["items"] if f["name"] == "INBOX")["unread"]

    before = unread()
    response = client.patch(
        f"/api/messages/{target}", json={"seen": True, "flagged": True}, headers=tenant_a.headers
    )
    assert response.status_code == 202
    assert unread() == before - 1  # the folder's count follows at once
    change = response.get_json()
    assert (change["kind"], change["state"], change["message_id"]) == ("flags", "pending", target)
    # Shown at once...
    shown = client.get(f"/api/messages/{target}", headers=tenant_a.headers).get_json()
    assert shown["flags"]["seen"] and shown["flags"]["flagged"]
    # ...and a sync before the worker writes it back does not undo it.
    make_syncer(flag_scan_interval=timedelta(0)).sync_account(account_id)
    shown = client.get(f"/api/messages/{target}", headers=tenant_a.headers).get_json()
    assert shown["flags"]["seen"] and shown["flags"]["flagged"]

    assert apply_changes(ctx, account_id) == 1
    server = mailbox.flags("INBOX")
    uid = stored(db_sessionmaker, account_id)["INBOX"]
    [mine] = [u for u, m in uid.items() if m.id == target]
    assert {b"\\Seen", b"\\Flagged"} <= server[mine]
    make_syncer(flag_scan_interval=timedelta(0)).sync_account(account_id)
    shown = client.get(f"/api/messages/{target}", headers=tenant_a.headers).get_json()
    assert shown["flags"]["seen"] and shown["flags"]["flagged"]
    assert unread() == before - 1

    client.patch(f"/api/messages/{target}", json={"flagged": False}, headers=tenant_a.headers)
    apply_changes(ctx, account_id)
    assert b"\\Flagged" not in mailbox.flags("INBOX")[mine]
    assert b"\\Seen" in mailbox.flags("INBOX")[mine]  # untouched: only what was asked


def test_a_move_happens_on_the_server_and_the_next_sync_keeps_it(
    ctx, client, tenant_a, synced, account_id, mailbox, make_syncer, db_sessionmaker, env
):
    moved = synced["with pdf"]
    response = client.post(
        f"/api/messages/{moved}/move", json={"folder": "archive"}, headers=tenant_a.headers
    )
    assert response.status_code == 202
    assert apply_changes(ctx, account_id) == 1

    with mailbox.client() as imap:
        imap.select_folder("Archive", readonly=True)
        assert imap.search(["SUBJECT", "with pdf"])
        imap.select_folder("INBOX", readonly=True)
        assert not imap.search(["SUBJECT", "with pdf"])
    folders = stored(db_sessionmaker, account_id)
    assert [m.subject for m in folders["Archive"].values()] == ["with pdf"]
    assert "with pdf" not in {m.subject for m in folders["INBOX"].values()}
    assert client.get(f"/api/messages/{moved}", headers=tenant_a.headers).status_code == 404

    with wire_log() as wire:
        make_syncer().sync_account(account_id)
    assert wire.fetched_bodies() == []  # the copy's new UID came from COPYUID: no refetch
    after = stored(db_sessionmaker, account_id)
    assert [m.subject for m in after["Archive"].values()] == ["with pdf"]
    assert set(after["Archive"]) == mailbox.uids("Archive")


def test_delete_moves_to_trash_then_deletes_for_good(
    ctx, client, tenant_a, synced, account_id, mailbox, make_syncer, db_sessionmaker, env
):
    doomed = synced["oldest"]
    assert client.delete(f"/api/messages/{doomed}", headers=tenant_a.headers).status_code == 202
    apply_changes(ctx, account_id)
    trash = stored(db_sessionmaker, account_id)["Trash"]
    [in_trash] = [m.id for m in trash.values() if m.subject == "oldest"]
    assert mailbox.uids("Trash") == set(trash)

    assert client.delete(f"/api/messages/{in_trash}", headers=tenant_a.headers).status_code == 202
    apply_changes(ctx, account_id)
    assert mailbox.uids("Trash") == set()
    make_syncer().sync_account(account_id)
    assert stored(db_sessionmaker, account_id)["Trash"] == {}


def test_bad_change_requests(client, tenant_a, synced):
    target = synced["oldest"]
    assert (
        client.patch(f"/api/messages/{target}", json={}, headers=tenant_a.headers).status_code
        == 422
    )
    assert (
        client.patch(
            f"/api/messages/{target}", json={"seen": "yes"}, headers=tenant_a.headers
        ).status_code
        == 422
    )
    assert (
        client.post(
            f"/api/messages/{target}/move", json={"folder": "Nowhere"}, headers=tenant_a.headers
        ).status_code
        == 422
    )
    assert (
        client.post(
            f"/api/messages/{target}/move", json={"folder": "INBOX"}, headers=tenant_a.headers
        ).status_code
        == 422
    )


def test_changes_are_applied_by_a_real_worker(
    client, tenant_a, synced, env, tmp_path, mailbox, db_sessionmaker, account_id, empty_queues
):
    from tests.support import run_cli

    client.patch(
        f"/api/messages/{synced['hostile html']}", json={"seen": True}, headers=tenant_a.headers
    )
    result = run_cli(["worker", "--burst", "default"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = stored(db_sessionmaker, account_id)["INBOX"]
    [uid] = [u for u, m in rows.items() if m.id == synced["hostile html"]]
    assert b"\\Seen" in mailbox.flags("INBOX")[uid]


def test_the_raw_message_parses_back(client, tenant_a, synced):
    raw = client.get(f"/api/messages/{synced['oldest']}/raw", headers=tenant_a.headers).data
    assert email.message_from_bytes(raw)["Subject"] == "oldest"


def test_an_attachment_of_a_message_of_millions_of_empty_parts_costs_little(
    client, tenant_a, account_id, mailbox, make_syncer, db_sessionmaker
):
    """24 MB of empty MIME parts, stored on Dovecot and synced: reading it and downloading its
    attachments parse only the first 1000 parts (the cap stops the parser), so each request
    costs a few copies of the raw bytes, not a gigabyte of parsed parts."""
    import tracemalloc

    from tests.mail.test_mime import empty_parts

    raw = empty_parts(3_500_000)
    assert 24_000_000 < len(raw) < 26_214_400  # under MAX_MESSAGE_BYTES: stored whole
    mailbox.append("INBOX", raw)
    make_syncer().sync_account(account_id)
    [stored_copy] = stored(db_sessionmaker, account_id)["INBOX"].values()
    url = f"/api/messages/{stored_copy.id}"

    tracemalloc.start()
    try:
        detail = client.get(url, headers=tenant_a.headers)
        first = client.get(f"{url}/attachments/0", headers=tenant_a.headers)
        beyond = client.get(f"{url}/attachments/1", headers=tenant_a.headers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert detail.status_code == 200
    body = detail.get_json()
    assert [a["filename"] for a in body["attachments"]] == ["first.txt"]
    assert "more than 1000 MIME parts" in body["parse_error"]
    assert first.status_code == 200 and first.data == b"hello"
    # The part after the millions of empty ones is past the cap: not served, a clear 404.
    assert beyond.status_code == 404
    assert beyond.get_json()["error"]["code"] == "not_found"
    # The raw bytes are read from PostgreSQL for each download (24 MB); parsing every part
    # would add about a gigabyte.
    assert peak < 100 * 1024 * 1024, peak


def test_a_change_whose_job_was_lost_is_written_back_by_the_sweep(
    ctx, env, tmp_path, client, tenant_a, synced, account_id, mailbox, db_sessionmaker, empty_queues
):
    from sqlalchemy import update

    from app.jobs import QueueName
    from app.models import MessageChange
    from app.services.messages import resume_job_id, resume_pending
    from tests.support import run_cli

    target = synced["oldest"]
    response = client.patch(
        f"/api/messages/{target}", json={"seen": True}, headers=tenant_a.headers
    )
    change_id = response.get_json()["id"]
    ctx.jobs.queue(QueueName.DEFAULT).empty()  # its job lost (a Redis outage, a killed worker)
    assert resume_pending(ctx) == 0  # just asked for: its own job may still be on the way
    with db_sessionmaker.begin() as s:
        s.execute(
            update(MessageChange)
            .where(MessageChange.id == change_id)
            .values(created_at=datetime.now(timezone.utc) - timedelta(minutes=2))
        )
    assert resume_pending(ctx) == 1
    assert resume_pending(ctx) == 0  # one sweep job per account while it waits
    assert ctx.jobs.queue(QueueName.DEFAULT).job_ids == [resume_job_id(account_id)]

    result = run_cli(["worker", "--burst", "default"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    [uid] = [u for u, m in stored(db_sessionmaker, account_id)["INBOX"].items() if m.id == target]
    assert b"\\Seen" in mailbox.flags("INBOX")[uid]
    with db_sessionmaker() as s:
        done = s.get_one(MessageChange, change_id)
        assert (done.state, done.attempts) == ("done", 1)  # written once
    assert resume_pending(ctx) == 0  # nothing left pending


def test_a_database_outage_during_write_back_is_retried_within_seconds(
    env, contexts, client, tenant_a, synced, account_id, mailbox, db_sessionmaker, empty_queues
):
    from urllib.parse import urlsplit

    from rq.registry import ScheduledJobRegistry

    from app.jobs import QueueName
    from app.services.messages import run_apply_job
    from tests.support import TcpProxy

    database = urlsplit(env["DATABASE_URL"])
    proxy = TcpProxy((database.hostname, database.port))
    proxied = database._replace(
        netloc=database.netloc.replace(f":{database.port}", f":{proxy.port}")
    )
    ctx = contexts(dict(env, DATABASE_URL=proxied.geturl()))
    target = synced["hostile html"]
    client.patch(f"/api/messages/{target}", json={"flagged": True}, headers=tenant_a.headers)
    ctx.jobs.queue(QueueName.DEFAULT).empty()

    # PostgreSQL does not answer (the proxy is off): the job neither fails nor waits long.
    assert run_apply_job(ctx, account_id) == 0
    queue = ctx.jobs.queue(QueueName.DEFAULT)
    registry = ScheduledJobRegistry(queue=queue)
    [retry_id] = registry.get_job_ids()
    due = registry.get_scheduled_time(retry_id)
    assert due <= datetime.now(timezone.utc) + timedelta(seconds=4)  # base 2 s, +-50%
    retry = queue.fetch_job(retry_id)
    assert retry.args == (account_id, 1)

    proxy.start()  # back
    try:
        assert run_apply_job(ctx, *retry.args) == 1
    finally:
        proxy.stop()
    [uid] = [u for u, m in stored(db_sessionmaker, account_id)["INBOX"].items() if m.id == target]
    assert b"\\Flagged" in mailbox.flags("INBOX")[uid]
