"""The sync engine against the stack's real Dovecot, with and without CONDSTORE/QRESYNC.

Assertions are on the database and on what went over the wire (imapclient's protocol log),
never on the sync's own counters.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.mail import MailConnectionError
from app.models import Account, Folder, Message, MessageRaw
from app.services.sync import SyncObserver
from tests.mailbox import add_account, message, stored, wire_log
from tests.support import TcpProxy

BROKEN_MIME = (
    b"From: Broken <broken@example.test>\r\nSubject: broken mime\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
    b"--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"!!!not base64!!!\r\n--never-clo"
)
WRONG_CHARSET = (
    b"From: x@example.test\r\nSubject: wrong charset\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="x-unknown-charset"\r\n\r\nCaf\xe9 cr\xe8me\r\n'
)
RFC2047 = (
    b"From: =?UTF-8?B?SsO2cmcgTcO8bGxlcg==?= <jorg@example.test>\r\n"
    b"To: =?ISO-8859-1?Q?Ren=E9?= <rene@example.test>\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=\r\n"
    b"Date: Tue, 03 Feb 2026 10:00:00 +0100\r\nMessage-ID: <rfc2047@example.test>\r\n\r\nHallo\r\n"
)


def build_mailbox(mailbox) -> None:
    mailbox.append("INBOX", message(subject="plain one", body="just text"))
    mailbox.append(
        "INBOX",
        message(
            subject="alternative",
            body="text part",
            html="<p>html <b>part</b><script>alert(1)</script></p>",
        ),
    )
    mailbox.append(
        "INBOX",
        message(
            subject="with attachment",
            body="see attached",
            attachments=[("report.pdf", "application/pdf", b"%PDF-1.4 x" * 50)],
        ),
    )
    mailbox.append("INBOX", RFC2047)
    mailbox.append("INBOX", WRONG_CHARSET)
    mailbox.append("INBOX", BROKEN_MIME)
    mailbox.append("Données", message(subject="dans un dossier accentué"))
    mailbox.append("Archive/2024", message(subject="archived"))


def test_initial_sync_stores_every_message_once_parsed(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    build_mailbox(mailbox)
    outcome = make_syncer(batch_messages=2).sync_account(account_id)
    assert outcome.complete

    folders = stored(db_sessionmaker, account_id)
    assert {
        "INBOX",
        "Données",
        "Archive/2024",
        "Sent",
        "Trash",
        "Drafts",
        "Junk",
        "Archive",
    } <= set(folders)
    for name in ("INBOX", "Données", "Archive/2024"):
        assert set(folders[name]) == mailbox.uids(name), name
    inbox = {m.subject: m for m in folders["INBOX"].values()}
    assert set(inbox) == {
        "plain one",
        "alternative",
        "with attachment",
        "Grüße aus München",
        "wrong charset",
        "broken mime",
    }
    assert inbox["plain one"].text_body.strip() == "just text"
    assert inbox["alternative"].text_body.strip() == "text part"
    assert "<b>part</b>" in inbox["alternative"].html_body
    assert "script" not in inbox["alternative"].html_body
    attachment = inbox["with attachment"]
    assert attachment.has_attachments
    assert attachment.attachments[0]["filename"] == "report.pdf"
    assert attachment.attachments[0]["size"] == len(b"%PDF-1.4 x" * 50)
    umlauts = inbox["Grüße aus München"]
    assert (umlauts.from_name, umlauts.from_email) == ("Jörg Müller", "jorg@example.test")
    assert umlauts.to_addrs == [{"name": "René", "email": "rene@example.test"}]
    assert umlauts.message_id_header == "rfc2047@example.test"
    assert umlauts.date.isoformat() == "2026-02-03T09:00:00+00:00"
    assert "Caf" in inbox["wrong charset"].text_body
    assert inbox["broken mime"].parse_error
    assert inbox["plain one"].parse_error is None
    assert next(iter(folders["Données"].values())).subject == "dans un dossier accentué"

    with db_sessionmaker() as s:
        roles = dict(
            s.execute(select(Folder.name, Folder.role).where(Folder.account_id == account_id)).all()
        )
        raw = s.scalar(
            select(MessageRaw.data)
            .join(Message, Message.raw_id == MessageRaw.id)
            .where(Message.id == inbox["broken mime"].id)
        )
    assert roles["INBOX"] == "inbox" and roles["Sent"] == "sent" and roles["Trash"] == "trash"
    assert roles["Données"] is None
    assert bytes(raw) == BROKEN_MIME  # exactly what the server sent


def test_the_sync_never_sets_seen(mailbox, account_id, make_syncer):
    mailbox.append("INBOX", message(subject="unread 1"))
    mailbox.append("INBOX", message(subject="unread 2"))
    make_syncer().sync_account(account_id)
    assert all(b"\\Seen" not in flags for flags in mailbox.flags("INBOX").values())


def _verbs(sent: list[str]) -> list[str]:
    """The command names of logged commands (`UID FETCH`, `LIST`...)."""
    verbs = []
    for line in sent:
        words = line[2:].lstrip("b'\"").split()
        verb = words[1].upper() if len(words) > 1 else ""
        verbs.append(f"UID {words[2].upper()}" if verb == "UID" and len(words) > 2 else verb)
    return verbs


def _folder_rows(sessionmaker, account_id: int) -> dict[str, tuple]:
    with sessionmaker() as s:
        return {
            f.name: (f.uidvalidity, f.uidnext, f.highestmodseq, f.messages_count, f.unread_count)
            for f in s.scalars(select(Folder).where(Folder.account_id == account_id))
        }


def test_a_resync_with_no_change_fetches_no_body(mailbox, account_id, make_syncer, db_sessionmaker):
    build_mailbox(mailbox)
    make_syncer().sync_account(account_id)
    before = _folder_rows(db_sessionmaker, account_id)
    started = datetime.now(timezone.utc)
    # No flag rescan due (the server without CONDSTORE rescans every flag_scan_interval).
    with wire_log() as wire:
        assert make_syncer(flag_scan_interval=timedelta(hours=1)).sync_account(account_id).complete
    assert wire.fetched_bodies() == []
    # Dovecot offers LIST-STATUS (RFC 5819): every folder's STATUS comes with the list, in
    # one round trip; no folder is asked STATUS on its own, none is opened.
    verbs = _verbs(wire.sent)
    assert verbs.count("LIST") == 1, verbs
    (listed,) = [line for line in wire.sent if " LIST " in line]
    condstore = before["INBOX"][2] is not None  # a HIGHESTMODSEQ stored
    items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if condstore else "")
    assert f"RETURN (SPECIAL-USE STATUS ({items}))" in listed
    assert not {"STATUS", "EXAMINE", "SELECT", "UID SEARCH", "UID FETCH"} & set(verbs), verbs
    # Nothing of the folders' state moved; each is marked synced, the round is complete.
    assert _folder_rows(db_sessionmaker, account_id) == before
    with db_sessionmaker() as s:
        folders = s.scalars(select(Folder).where(Folder.account_id == account_id)).all()
        account = s.get_one(Account, account_id)
        assert all(f.last_synced_at >= started and f.last_error is None for f in folders)
        assert account.sync_started_at is None and account.last_synced_at >= started
        assert account.sync_folders_done == account.sync_folders_total == len(folders)


def test_a_changed_folder_among_unchanged_ones_is_synced_alone(
    mailbox, account_id, make_syncer, db_sessionmaker, monkeypatch
):
    build_mailbox(mailbox)
    make_syncer().sync_account(account_id)
    before = _folder_rows(db_sessionmaker, account_id)
    mailbox.append("Données", message(subject="nouveau"))
    with wire_log() as wire:
        assert make_syncer(flag_scan_interval=timedelta(hours=1)).sync_account(account_id).complete
    verbs = _verbs(wire.sent)
    assert verbs.count("EXAMINE") == 1 and "STATUS" not in verbs, verbs
    assert len(wire.fetched_bodies()) == 1
    after = _folder_rows(db_sessionmaker, account_id)
    assert {name for name in after if after[name] != before[name]} == {"Données"}
    folders = stored(db_sessionmaker, account_id)
    assert set(folders["Données"]) == mailbox.uids("Données")
    assert after["Données"][3] == 2  # counted

    # A listed STATUS too old to trust (a long run): each folder is asked STATUS itself.
    from app.services.sync import account as account_module

    monkeypatch.setattr(account_module, "LISTED_STATUS_SECONDS", -1.0)
    mailbox.append("Archive/2024", message(subject="archived later"))
    with wire_log() as wire:
        assert make_syncer(flag_scan_interval=timedelta(hours=1)).sync_account(account_id).complete
    verbs = _verbs(wire.sent)
    assert verbs.count("STATUS") == len(after) and verbs.count("EXAMINE") == 1, verbs
    folders = stored(db_sessionmaker, account_id)
    assert set(folders["Archive/2024"]) == mailbox.uids("Archive/2024")


def test_new_mail_flags_expunges_and_moves_from_another_client(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    first, second, third = (mailbox.append("INBOX", message(subject=f"m{i}")) for i in range(3))
    make_syncer().sync_account(account_id)

    mailbox.deliver(message(subject="delivered by postfix", to=mailbox.email))
    with mailbox.client() as c:
        c.select_folder("INBOX")
        c.add_flags([first], [b"\\Seen", b"\\Flagged", b"$Important"])
        c.delete_messages([second])
        c.expunge()
        c.move([third], "Archive")
    # LMTP delivery is asynchronous to the SMTP reply: wait until Dovecot has it.
    from tests.support import wait_for

    wait_for(lambda: len(mailbox.uids("INBOX")) == 2)
    with wire_log() as wire:
        make_syncer().sync_account(account_id)

    folders = stored(db_sessionmaker, account_id)
    assert set(folders["INBOX"]) == mailbox.uids("INBOX")
    subjects = {m.subject for m in folders["INBOX"].values()}
    assert subjects == {"m0", "delivered by postfix"}
    flagged = folders["INBOX"][first]
    assert (flagged.seen, flagged.flagged, flagged.keywords) == (True, True, ["$Important"])
    assert [m.subject for m in folders["Archive"].values()] == ["m2"]
    # Only the two new copies were downloaded.
    assert len(wire.fetched_bodies()) == 2


def test_uidvalidity_change_replaces_the_folder_content(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    mailbox.fill("Projects", 5, prefix="old")
    make_syncer().sync_account(account_id)
    old_validity = mailbox.uidvalidity("Projects")
    with mailbox.client() as c:
        c.delete_folder("Projects")
        c.create_folder("Projects")
    mailbox.fill("Projects", 3, prefix="new")
    assert mailbox.uidvalidity("Projects") != old_validity

    make_syncer(batch_messages=1).sync_account(account_id)
    folders = stored(db_sessionmaker, account_id)
    assert sorted(m.subject for m in folders["Projects"].values()) == ["new 0", "new 1", "new 2"]
    with db_sessionmaker() as s:
        # No stale copy under the old UIDVALIDITY left behind.
        total = s.scalar(
            select(func.count())
            .select_from(Message)
            .join(Folder)
            .where(Folder.account_id == account_id, Folder.name == "Projects")
        )
    assert total == 3


def test_a_renamed_folder_keeps_its_messages_without_refetching(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    mailbox.fill("Old name", 4)
    make_syncer().sync_account(account_id)
    before = {m.subject: m.id for m in stored(db_sessionmaker, account_id)["Old name"].values()}
    with mailbox.client() as c:
        c.rename_folder("Old name", "New name")
    with wire_log() as wire:
        make_syncer().sync_account(account_id)
    folders = stored(db_sessionmaker, account_id)
    assert "Old name" not in folders
    assert {m.subject: m.id for m in folders["New name"].values()} == before
    assert wire.fetched_bodies() == []


def test_a_run_stopped_by_its_budget_keeps_the_unchanged_folders_it_checked(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    mailbox.fill("INBOX", 2)
    mailbox.fill("Projects", 1)
    make_syncer().sync_account(account_id)
    mailbox.fill("Projects", 4, prefix="later")
    started = datetime.now(timezone.utc)
    quiet = {"flag_scan_interval": timedelta(hours=1), "batch_messages": 1}
    # INBOX, Sent, Drafts and Archive come before Projects, unchanged; Projects stops the run.
    outcome = make_syncer(max_messages=2, **quiet).sync_account(account_id)
    assert not outcome.complete and outcome.messages_fetched == 2
    with db_sessionmaker() as s:
        synced = {
            f.name
            for f in s.scalars(select(Folder).where(Folder.account_id == account_id))
            if f.last_synced_at is not None and f.last_synced_at >= started
        }
        done = s.get_one(Account, account_id).sync_folders_done
    assert synced == {"INBOX", "Sent", "Drafts", "Archive"} and done == 4
    # The continuation does not visit them again: it opens Projects alone and ends the round.
    with wire_log() as wire:
        assert make_syncer(**quiet).sync_account(account_id).complete
    verbs = _verbs(wire.sent)
    assert verbs.count("EXAMINE") == 1, verbs
    assert set(stored(db_sessionmaker, account_id)["Projects"]) == mailbox.uids("Projects")


class CutAfterFirstBatch(SyncObserver):
    """Cuts the connection once a batch is committed, in the middle of the next one."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.committed: list[int] = []

    def batch_committed(self, folder: str, uids: list[int]) -> None:
        self.committed += uids
        if len(self.committed) == len(uids):  # the first batch
            self.proxy.cut_after_bytes(4000)


def test_a_connection_cut_mid_batch_loses_and_duplicates_nothing(
    server, mailbox, ctx_allowing, db_sessionmaker, tenant_a, make_syncer
):
    uids = mailbox.fill("INBOX", 60)
    proxy = TcpProxy((mailbox.host, mailbox.imap_port))
    proxy.start()
    ctx = ctx_allowing(f"127.0.0.1:{proxy.port}")
    try:
        proxied = type(mailbox)(**{**vars(mailbox), "imap_port": proxy.port})
        account_id = add_account(ctx, tenant_a.tenant_id, proxied)
        cutter = CutAfterFirstBatch(proxy)
        with pytest.raises(MailConnectionError):
            make_syncer(observer=cutter, context=ctx, batch_messages=10).sync_account(account_id)
        assert len(cutter.committed) == 10
        committed = set(cutter.committed)
        assert set(stored(db_sessionmaker, account_id)["INBOX"]) == committed

        proxy.start()
        with wire_log() as wire:
            assert make_syncer(context=ctx, batch_messages=10).sync_account(account_id).complete
    finally:
        proxy.stop()
    rows = stored(db_sessionmaker, account_id)["INBOX"]
    assert set(rows) == set(uids)  # no gap
    with db_sessionmaker() as s:
        copies = s.scalar(
            select(func.count())
            .select_from(Message)
            .join(Folder)
            .where(Folder.account_id == account_id, Folder.name == "INBOX")
        )
    assert copies == 60  # no duplicate
    refetched = {uid for line in wire.fetched_bodies() for uid in _uids_in(line)}
    assert refetched == set(uids) - committed


def _uids_in(line: str) -> set[int]:
    """UIDs named in a logged `UID FETCH <set> (...)` command."""
    spec = line.split("UID FETCH ")[1].split(" ")[0]
    result = set()
    for part in spec.split(","):
        low, _, high = part.partition(":")
        result |= set(range(int(low), int(high or low) + 1))
    return result


def test_two_tenants_synced_at_once_never_mix(
    server, user_pools, ctx, db_sessionmaker, tenant_a, tenant_b, make_syncer
):
    from tests.mailbox import UserPool

    pool = user_pools.setdefault(server.name, UserPool(server))
    boxes = [pool.take(), pool.take()]
    for box, tag in zip(boxes, ("alpha", "beta"), strict=True):
        box.fill("INBOX", 15, prefix=tag)
    ids = [
        add_account(ctx, t.tenant_id, b) for t, b in zip((tenant_a, tenant_b), boxes, strict=True)
    ]
    errors = []

    def run(account_id: int) -> None:
        try:
            make_syncer(batch_messages=3).sync_account(account_id)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db_sessionmaker() as s:
        for account_id, tenant, tag in zip(
            ids, (tenant_a, tenant_b), ("alpha", "beta"), strict=True
        ):
            rows = s.execute(
                select(Message.tenant_id, Message.subject).where(Message.account_id == account_id)
            ).all()
            assert len(rows) == 15
            assert {t for t, _ in rows} == {tenant.tenant_id}
            assert all(subject.startswith(tag) for _, subject in rows)


def test_one_sync_per_account_at_a_time(mailbox, account_id, make_syncer):
    mailbox.fill("INBOX", 3)
    from app.db import advisory_lock
    from app.services.sync import lock_key

    with advisory_lock(make_syncer().ctx.engine, lock_key(account_id)) as held:
        assert held
        outcome = make_syncer().sync_account(account_id)
    assert outcome.busy and not outcome.complete
    assert make_syncer().sync_account(account_id).complete
