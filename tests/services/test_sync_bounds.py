"""The sync within its bounds: messages above MAX_MESSAGE_BYTES stored headers-only (the real
Dovecot, and a peer that lies about sizes), hostile servers ended within their deadlines with a
clear last_error, the folder cap, and a sync process's peak memory while a peer streams 1 GiB.

Accounts on a peer of the tests' own are made and synced with a context whose settings allow
that peer (tests.support.allowing): the session's `ctx` allows only the stack's servers.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.context import ServiceContext
from app.errors import Conflict
from app.mail import MailConnectionError
from app.models import Account, Folder, Message
from app.schemas.messages import summary_model
from app.services import messages
from app.services.accounts import AccountFields, ServerFields, create_account
from app.services.sync import Syncer, SyncLimits, sync_status
from app.states import Security, SyncState
from tests.imap_peer import ImapPeer
from tests.imap_peer import message as peer_message
from tests.mailbox import add_account, message, stored
from tests.support import allowing, cli_env

KIB = 1024
MIB = 1024 * KIB
# What a sync process may reach at its peak, its whole process tree together.
PEAK_RSS_BOUND = 256 * MIB


@pytest.fixture
def make_ctx(env, ctx):
    """Contexts on the session's stack with settings changed and peers allowed, besides what
    `ctx` allows (both stacks' mail servers)."""
    built: list[ServiceContext] = []
    base = dict(env, ALLOWED_PRIVATE_HOSTS=",".join(ctx.settings.allowed_private_hosts))

    def make(*pairs: str, **settings: str) -> ServiceContext:
        ctx = ServiceContext.build(Settings.from_mapping(allowing(dict(base, **settings), *pairs)))
        built.append(ctx)
        return ctx

    yield make
    for ctx in built:
        ctx.close()


def peer_account(ctx: ServiceContext, tenant_id: int, peer: ImapPeer) -> int:
    server = ServerFields("127.0.0.1", peer.port, Security.NONE, "alice", "secret")
    with ctx.work(tenant_id) as unit:
        fields = AccountFields("alice@peer.test", None, server, server)
        return create_account(unit, fields, verify=False).id


def syncer(ctx: ServiceContext, **limits) -> Syncer:
    return Syncer(ctx, SyncLimits(max_messages=None, max_seconds=None, **limits))


def last_error(ctx: ServiceContext, account_id: int) -> str | None:
    with ctx.sessions() as s:
        return s.get_one(Account, account_id).last_error


def test_a_message_over_max_message_bytes_is_stored_headers_only(
    make_ctx, tenant_a, mailbox, db_sessionmaker
):
    ctx = make_ctx(MAX_MESSAGE_BYTES=str(64 * KIB))
    mailbox.append("INBOX", message(subject="small before", body="first"))
    big = message(
        subject="too big to keep",
        body="the body",
        attachments=[("big.bin", "application/octet-stream", b"z" * 200 * KIB)],
    )
    mailbox.append("INBOX", big)
    mailbox.append("INBOX", message(subject="small after", body="last"))
    account_id = add_account(ctx, tenant_a.tenant_id, mailbox)

    assert syncer(ctx).sync_account(account_id).complete
    inbox = {m.subject: m for m in stored(db_sessionmaker, account_id)["INBOX"].values()}
    assert set(inbox) == {"small before", "too big to keep", "small after"}
    large = inbox["too big to keep"]
    assert large.too_large and not large.over_quota
    assert large.size >= len(big)  # the size the server gave, not the header's
    assert large.from_email == "sender@example.test"
    assert ("Subject", "too big to keep") in [tuple(h) for h in large.headers]
    assert large.text_body is None and large.attachments == []
    for name in ("small before", "small after"):
        assert not inbox[name].too_large and inbox[name].text_body.strip() in ("first", "last")

    with ctx.work(tenant_a.tenant_id) as unit:
        message_row, folder = messages.get_message(unit, large.id)
        summary = summary_model(message_row, folder.name).model_dump(by_alias=True)
        assert summary["too_large"] is True and summary["over_quota"] is False
        with pytest.raises(Conflict, match="MAX_MESSAGE_BYTES"):
            messages.raw_message(unit, large.id)
        with pytest.raises(Conflict):
            messages.attachment(unit, large.id, 0)
        assert messages.raw_message(unit, inbox["small after"].id).startswith(b"Subject")


def test_a_server_lying_about_a_size_costs_that_message_its_body_not_the_sync(
    make_ctx, tenant_a, db_sessionmaker
):
    folders = {
        "INBOX": {1: peer_message("one"), 2: peer_message("liar"), 3: peer_message("three")},
        "Archive": {1: peer_message("archived")},
    }
    with ImapPeer(folders=folders, huge={2: 900}) as peer:
        ctx = make_ctx(peer.pair, IMAP_COMMAND_TIMEOUT_SECONDS="10")
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        assert syncer(ctx).sync_account(account_id).complete
        assert peer.literal_bytes_sent < 64 * MIB  # dropped at the announcement, not read
        assert peer.sessions >= 2  # it reconnected and went on

    synced = stored(db_sessionmaker, account_id)
    inbox = synced["INBOX"]
    assert {uid: m.too_large for uid, m in inbox.items()} == {1: False, 2: True, 3: False}
    assert inbox[2].subject == "liar" and inbox[2].text_body is None
    assert inbox[3].text_body.strip() == "hello"
    assert [m.subject for m in synced["Archive"].values()] == ["archived"]
    assert last_error(ctx, account_id) is None


@pytest.mark.parametrize("mode", ["silent", "drip"])
def test_a_stalling_server_ends_the_sync_within_its_deadline(make_ctx, tenant_a, mode: str):
    with ImapPeer(mode=mode, drip_seconds=1) as peer:
        ctx = make_ctx(peer.pair, IMAP_COMMAND_TIMEOUT_SECONDS="3")
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="timed out"):
            syncer(ctx).sync_account(account_id)
        assert time.monotonic() - started < 3 + 5
    assert last_error(ctx, account_id) == "timed out"
    with ctx.work(tenant_a.tenant_id) as unit:
        status = sync_status(unit, account_id)
    assert (status.state, status.last_error) == (SyncState.FAILED, "timed out")


def test_imap_max_line_bytes_reaches_the_sync(make_ctx, tenant_a):
    with ImapPeer(mode="long_line", long_line_bytes=200 * KIB) as peer:
        ctx = make_ctx(peer.pair, IMAP_MAX_LINE_BYTES=str(64 * KIB))
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        with pytest.raises(MailConnectionError, match="response too long"):
            syncer(ctx).sync_account(account_id)
    assert last_error(ctx, account_id) == "response too long"


def test_an_endless_folder_list_fails_the_sync_with_a_clear_error(make_ctx, tenant_a):
    with ImapPeer(mode="endless_list") as peer:
        ctx = make_ctx(peer.pair, IMAP_COMMAND_TIMEOUT_SECONDS="60", MAX_FOLDERS_PER_ACCOUNT="5")
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="response too long"):
            syncer(ctx).sync_account(account_id)
        assert time.monotonic() - started < 30  # the entry count, not the 60 s deadline
    assert last_error(ctx, account_id) == "response too long"


def test_folders_over_the_cap_are_skipped_and_noted(make_ctx, tenant_a, db_sessionmaker):
    folders = {"INBOX": {1: peer_message("in inbox")}}
    folders.update({f"Project {n}": {1: peer_message(f"p{n}")} for n in range(9)})
    with ImapPeer(folders=folders) as peer:
        ctx = make_ctx(peer.pair, MAX_FOLDERS_PER_ACCOUNT="4")
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        assert syncer(ctx).sync_account(account_id).complete
    synced = stored(db_sessionmaker, account_id)
    assert len(synced) == 4 and "INBOX" in synced
    note = "6 folders not synced: more than MAX_FOLDERS_PER_ACCOUNT (4)"
    assert last_error(ctx, account_id) == note
    # The round finished: the status is not a failure, it carries the note.
    with ctx.work(tenant_a.tenant_id) as unit:
        status = sync_status(unit, account_id)
    assert (status.state, status.last_error) == (SyncState.IDLE, note)


def copies(db_sessionmaker, account_id: int) -> dict[str, dict[int, int]]:
    """{folder: {uid: message id}}: which copies are stored (a copy stored again has a new id)."""
    return {
        name: {uid: m.id for uid, m in rows.items()}
        for name, rows in stored(db_sessionmaker, account_id).items()
    }


def peer_folders() -> dict[str, dict[int, bytes]]:
    return {
        "INBOX": {1: peer_message("one"), 2: peer_message("two")},
        "Archive": {1: peer_message("archived")},
        "Projects": {1: peer_message("project")},
    }


def test_a_no_op_resync_without_list_status_asks_status_per_folder_and_opens_none(
    make_ctx, tenant_a, db_sessionmaker
):
    with ImapPeer(folders=peer_folders()) as peer:
        ctx = make_ctx(peer.pair)
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        assert syncer(ctx).sync_account(account_id).complete
        first = copies(db_sessionmaker, account_id)
        peer.commands.clear()
        assert syncer(ctx).sync_account(account_id).complete
        sent = list(peer.commands)
    # No LIST-STATUS offered: the plain LIST, then one STATUS per folder, nothing opened.
    assert sent.count("LIST") == 1 and "LIST-STATUS" not in sent
    assert sent.count("STATUS") == 3
    assert not {"EXAMINE", "SELECT", "UID SEARCH", "UID FETCH"} & set(sent)
    assert copies(db_sessionmaker, account_id) == first
    assert last_error(ctx, account_id) is None


def test_a_no_op_resync_with_list_status_is_one_list_and_nothing_else(
    make_ctx, tenant_a, db_sessionmaker
):
    with ImapPeer(folders=peer_folders(), list_status=True) as peer:
        ctx = make_ctx(peer.pair)
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        assert syncer(ctx).sync_account(account_id).complete
        peer.commands.clear()
        assert syncer(ctx).sync_account(account_id).complete
        sent = list(peer.commands)
        # A change shows in the listed STATUS: that folder alone is opened.
        peer.folders["Archive"][2] = peer_message("archived later")
        peer.commands.clear()
        assert syncer(ctx).sync_account(account_id).complete
        changed = list(peer.commands)
    assert "LIST-STATUS" in sent
    assert not {"LIST", "STATUS", "EXAMINE", "SELECT", "UID FETCH"} & set(sent)
    assert changed.count("EXAMINE") == 1 and "STATUS" not in changed
    archive = stored(db_sessionmaker, account_id)["Archive"]
    assert sorted(m.subject for m in archive.values()) == ["archived", "archived later"]


BAD_STATUS = {
    # Not a number, and a UIDVALIDITY of zero: no STATUS for the folder, asked STATUS again.
    "Archive": '* STATUS "Archive" (MESSAGES many UIDNEXT 2 UIDVALIDITY 0)',
    # A number of 5000 digits (Python refuses to convert it), and no list at all.
    "Projects": '* STATUS "Projects" (MESSAGES ' + "9" * 5000 + " UIDNEXT 2 UIDVALIDITY 3)",
    "INBOX": "* STATUS (",
}


def test_malformed_list_status_answers_are_not_trusted_and_a_bad_status_costs_its_folder(
    make_ctx, tenant_a, db_sessionmaker
):
    with ImapPeer(folders=peer_folders(), list_status=True) as peer:
        ctx = make_ctx(peer.pair)
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        assert syncer(ctx).sync_account(account_id).complete
        first = copies(db_sessionmaker, account_id)
        peer.bad_status = dict(BAD_STATUS)
        peer.folders["INBOX"][3] = peer_message("three")
        peer.commands.clear()
        assert syncer(ctx).sync_account(account_id).complete
        sent = list(peer.commands)
    # Every folder whose listed STATUS was malformed was asked STATUS itself; those answers
    # are malformed too: the folder is skipped with an error, the others go on.
    assert sent.count("LIST-STATUS") == 1 and sent.count("STATUS") == 3
    synced = copies(db_sessionmaker, account_id)
    assert synced["Archive"] == first["Archive"] and synced["INBOX"] == first["INBOX"]
    with ctx.sessions() as s:
        errors = dict(
            s.execute(
                select(Folder.name, Folder.last_error).where(Folder.account_id == account_id)
            ).all()
        )
    assert all(errors[name] and "STATUS" in errors[name] for name in BAD_STATUS), errors
    assert last_error(ctx, account_id) is None


def test_a_list_status_answer_without_end_fails_the_sync_with_a_clear_error(make_ctx, tenant_a):
    with ImapPeer(folders=peer_folders(), list_status=True) as peer:
        ctx = make_ctx(peer.pair, IMAP_COMMAND_TIMEOUT_SECONDS="60")
        account_id = peer_account(ctx, tenant_a.tenant_id, peer)
        peer.mode = "status_flood"
        started = time.monotonic()
        with pytest.raises(MailConnectionError, match="response too long"):
            syncer(ctx).sync_account(account_id)
        assert time.monotonic() - started < 30  # the answers' count, not the 60 s deadline
    assert last_error(ctx, account_id) == "response too long"


# Runs the real CLI (`emailservice sync ID`) and, as it exits, writes the peak resident set
# of its whole process tree: its own VmHWM plus the largest of its waited-for children.
PEAK_WRAPPER = """
import atexit, resource, sys

out = sys.argv.pop(1)

def peak():
    with open("/proc/self/status") as status:
        own = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(out, "w") as f:
        f.write(str((own + children) * 1024))

atexit.register(peak)
from app.cli import main
main()
"""


@pytest.mark.slow
def test_a_sync_process_stays_small_while_a_peer_streams_a_gigabyte(
    env, make_ctx, tenant_a, db_sessionmaker, tmp_path: Path
):
    import subprocess

    folders = {
        "INBOX": {1: peer_message("before"), 2: peer_message("gigabyte"), 3: peer_message("after")},
        "Later": {1: peer_message("next folder")},
    }
    with ImapPeer(folders=folders, huge={2: 1000}, huge_literal_bytes=1024 * MIB) as peer:
        settings = allowing(dict(env, IMAP_COMMAND_TIMEOUT_SECONDS="20"), peer.pair)
        account_id = peer_account(make_ctx(peer.pair), tenant_a.tenant_id, peer)
        out = tmp_path / "peak"
        done = subprocess.run(
            [sys.executable, "-c", PEAK_WRAPPER, str(out), "sync", str(account_id)],
            env=cli_env(settings),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    peak = int(out.read_text())
    assert 0 < peak <= PEAK_RSS_BOUND, f"peak RSS {peak / MIB:.0f} MiB"
    synced = stored(db_sessionmaker, account_id)
    assert {uid: m.too_large for uid, m in synced["INBOX"].items()} == {
        1: False,
        2: True,
        3: False,
    }
    assert [m.subject for m in synced["Later"].values()] == ["next folder"]
    # The command leaves the mail searchable too, with no worker running to index it.
    assert "indexed for search" in done.stdout, done.stdout
    with db_sessionmaker() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.account_id == account_id, Message.search_vector.is_(None))
            )
            == 0
        )


def test_the_headers_only_hook_stores_new_mail_headers_only_as_over_quota(
    ctx, tenant_a, mailbox, db_sessionmaker
):
    """The storage quota's way in: asked before every batch, with the account's tenant."""
    mailbox.append("INBOX", message(subject="before the quota", body="kept whole"))
    account_id = add_account(ctx, tenant_a.tenant_id, mailbox)
    asked: list[int] = []

    def over_quota(tenant_id: int) -> bool:
        asked.append(tenant_id)
        return len(asked) > 1  # the first batch fits, everything after does not

    limits = SyncLimits(max_messages=None, max_seconds=None, batch_messages=1)
    assert Syncer(ctx, limits).sync_account(account_id).complete
    mailbox.append("INBOX", message(subject="after the quota", body="never read"))
    mailbox.append("INBOX", message(subject="also after", body="never read"))
    assert Syncer(ctx, limits, headers_only=over_quota).sync_account(account_id).complete

    inbox = {m.subject: m for m in stored(db_sessionmaker, account_id)["INBOX"].values()}
    assert set(asked) == {tenant_a.tenant_id} and len(asked) == 2
    assert not inbox["before the quota"].over_quota
    flags = {(m.over_quota, m.too_large, m.text_body is None) for m in inbox.values()}
    assert flags == {(False, False, False), (True, False, True)}
    assert sum(m.over_quota for m in inbox.values()) == 1
    with ctx.work(tenant_a.tenant_id) as unit:
        late = next(m for m in inbox.values() if m.over_quota)
        assert summary_model(late, "INBOX").over_quota is True
        with pytest.raises(Conflict, match="quota"):
            messages.raw_message(unit, late.id)


def test_a_sync_past_the_storage_quota_goes_on_headers_only_until_mail_is_deleted(
    make_ctx, tenant_a, mailbox, db_sessionmaker
):
    """TENANT_MAX_STORAGE_BYTES reached during a sync: later mail is stored with its headers
    only (over_quota) and the status says why, flags still apply, and deleting mail on the
    server brings the tenant back under, so new mail is stored whole again."""
    ctx = make_ctx(TENANT_MAX_STORAGE_BYTES="6000")
    run = syncer(ctx, batch_messages=1, flag_scan_interval=timedelta(0)).sync_account
    for n in range(3):
        mailbox.append("INBOX", message(subject=f"big {n}", body=f"line {n}\n" * 400))
    account_id = add_account(ctx, tenant_a.tenant_id, mailbox)
    assert run(account_id).complete

    inbox = {m.subject: m for m in stored(db_sessionmaker, account_id)["INBOX"].values()}
    whole = {s for s, m in inbox.items() if not m.over_quota}
    assert len(whole) == 2 and all(inbox[s].text_body for s in whole)  # ~3.4 kB each
    (late,) = (m for m in inbox.values() if m.over_quota)
    assert late.text_body is None and not late.too_large and late.subject.startswith("big")
    with ctx.work(tenant_a.tenant_id) as unit:
        status = sync_status(unit, account_id)
    assert status.state == SyncState.IDLE
    assert status.last_error is not None and "TENANT_MAX_STORAGE_BYTES" in status.last_error

    # Flags and expunges still apply over quota.
    with mailbox.client() as c:
        c.select_folder("INBOX")
        c.add_flags([late.uid], [b"\\Flagged"])
        c.delete_messages([inbox[s].uid for s in whole])
        c.expunge()
    assert run(account_id).complete
    inbox = {m.subject: m for m in stored(db_sessionmaker, account_id)["INBOX"].values()}
    assert set(inbox) == {late.subject}
    assert inbox[late.subject].flagged and inbox[late.subject].over_quota
    # The bytes of deleted mail leave the tenant's total with the round that saw them go.
    mailbox.append("INBOX", message(subject="after deleting", body="back under the quota"))
    assert run(account_id).complete
    inbox = {m.subject: m for m in stored(db_sessionmaker, account_id)["INBOX"].values()}
    assert not inbox["after deleting"].over_quota and inbox["after deleting"].text_body
    assert last_error(ctx, account_id) is None
