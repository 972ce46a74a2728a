"""Sending many messages cheaply: SMTP sessions kept between the messages of an account, and
Sent copies filed in batches on one IMAP login, against the stack's real Postfix and Dovecot
(their own logs count the sessions and logins), and a peer of the test's own that breaks a
kept session.
"""

from __future__ import annotations

import email
import re
import time
from pathlib import Path

import pytest

from app.mail.smtp import SessionPool
from app.models import OutboxEntry
from app.services import outbox
from app.services.outbox import Deliverer, RetryPolicy
from tests.mailbox import UserPool
from tests.services.test_outbox import (
    arrived,
    entry,
    inbox,
    make_account,
    peer_account,
    queue,
)
from tests.smtp_peer import SmtpPeer


@pytest.fixture
def mailbox(stack_control, user_pools):
    """The sender, on the stack whose Postfix and Dovecot logs the tests read."""
    return user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()


@pytest.fixture
def recipient(stack_control, user_pools):
    return user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()


class Log:
    """What a server of the stack logs from now on."""

    def __init__(self, stack, name: str) -> None:
        self.path = Path(stack.log_dir) / name
        self.start = self.path.stat().st_size

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace").splitlines()


def test_consecutive_messages_of_an_account_go_out_on_one_smtp_session(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, stack
):
    postfix = Log(stack, "postfix.log")
    pool = SessionPool()
    deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3), pool=pool)
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    ids = [
        queue(ctx, tenant_a.tenant_id, account_id, [recipient.email], subject=f"number {i}")
        for i in range(3)
    ]
    for outbox_id in ids:
        assert deliverer.deliver(outbox_id).state == "sent"
        assert len(pool) == 1  # kept for the next one
    pool.close()  # QUIT: Postfix logs the session's commands as it ends
    for outbox_id in ids:
        sent = entry(db_sessionmaker, outbox_id)
        assert (sent.state, sent.attempts) == ("sent", 1)
        assert len(arrived(recipient, sent.message_id)) == 1

    def ended() -> list[str]:
        return [
            line
            for line in postfix.lines()
            if "submission/smtpd" in line and "disconnect from" in line and " auth=1" in line
        ]

    deadline = time.monotonic() + 10
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.1)
    # One session: one login, three messages, an RSET before each kept one's next message.
    (session,) = ended()
    assert re.search(r" mail=3 rcpt=3 data=3 rset=2 ", session), session


def test_a_kept_session_that_breaks_mid_message_is_replaced_and_nothing_is_sent_twice(
    ctx_allowing, db_sessionmaker, tenant_a, mailbox
):
    with SmtpPeer() as peer:
        peer.scripts = ["accept_then_cut"]
        ctx = ctx_allowing(f"127.0.0.1:{peer.port}")
        pool = SessionPool()
        deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3), pool=pool)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        first = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
        second = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
        assert deliverer.deliver(first).state == "sent"
        # The kept session answers RSET, then breaks as the message begins: the same
        # attempt goes on a fresh session (the broken one never got to the ".").
        assert deliverer.deliver(second).state == "sent"
        pool.close()
        assert peer.sessions == 2
        got = [email.message_from_bytes(m)["Message-ID"] for m in peer.received]
    wanted = [entry(db_sessionmaker, i).message_id for i in (first, second)]
    assert got == wanted  # each once
    done = entry(db_sessionmaker, second)
    assert (done.state, done.attempts, done.last_error) == ("sent", 1, None)


def test_a_kept_session_the_server_dropped_is_replaced_before_the_message(
    ctx_allowing, db_sessionmaker, tenant_a, mailbox
):
    with SmtpPeer() as peer:
        peer.scripts = ["accept_then_close"]
        ctx = ctx_allowing(f"127.0.0.1:{peer.port}")
        pool = SessionPool()
        deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3), pool=pool)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        ids = [queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"]) for _ in range(2)]
        assert [deliverer.deliver(i).state for i in ids] == ["sent", "sent"]
        pool.close()
        assert peer.sessions == 2 and len(peer.received) == 2
    assert [entry(db_sessionmaker, i).attempts for i in ids] == [1, 1]


def test_an_idle_session_is_closed_rather_than_reused(ctx_allowing, tenant_a, mailbox):
    with SmtpPeer() as peer:
        ctx = ctx_allowing(f"127.0.0.1:{peer.port}")
        pool = SessionPool(idle=0.2)
        deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3), pool=pool)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        ids = [queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"]) for _ in range(2)]
        assert deliverer.deliver(ids[0]).state == "sent"
        time.sleep(0.5)
        pool.prune()
        assert len(pool) == 0
        assert deliverer.deliver(ids[1]).state == "sent"
        pool.close()
        assert peer.sessions == 2


def sent_four(ctx, deliverer, tenant, mailbox, recipient, prefix: str):
    """Four messages of a new account sent by `deliverer`, their Sent copies pending:
    (account id, outbox ids)."""
    account_id = make_account(ctx, tenant.tenant_id, mailbox)
    ids = [
        queue(ctx, tenant.tenant_id, account_id, [recipient.email], subject=f"{prefix} {i}")
        for i in range(4)
    ]
    for outbox_id in ids:
        assert deliverer.deliver(outbox_id).state == "sent"
    return account_id, ids


def test_sent_copies_are_filed_in_one_login_and_a_copy_filed_before_a_crash_is_not_doubled(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, stack
):
    deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3))
    account_id, ids = sent_four(ctx, deliverer, tenant_a, mailbox, recipient, "copy")
    entries = [entry(db_sessionmaker, i) for i in ids]
    assert {e.sent_copy for e in entries} == {"pending"}
    # A worker died after its APPEND of the third copy and before recording it: the copy is
    # in the folder, the entry still pending.
    with mailbox.client() as client:
        if not client.folder_exists("Sent"):
            client.create_folder("Sent")
        with db_sessionmaker() as session:
            mime = session.get(type(entries[2]), ids[2]).mime
        client.append("Sent", mime, flags=[b"\\Seen"])
    dovecot = Log(stack, "dovecot.log")

    assert deliverer.file_sent_copy(ids[0]).state == "done"
    assert [entry(db_sessionmaker, i).sent_copy for i in ids] == ["done"] * 4
    # The other jobs of the batch find their copy filed and do nothing.
    assert deliverer.file_sent_copy(ids[1]).state == "done"
    logins = [line for line in dovecot.lines() if f"Login: user=<{mailbox.email}>" in line]
    assert len(logins) == 1, logins
    in_sent = [m["Message-ID"] for m in inbox(mailbox, "Sent")]
    assert sorted(in_sent) == sorted(e.message_id for e in entries)  # each exactly once


def test_a_batch_of_sent_copies_is_bounded_in_count_and_bytes_the_wanted_one_first(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, monkeypatch
):
    deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3))
    account_id, ids = sent_four(ctx, deliverer, tenant_a, mailbox, recipient, "batch")
    with db_sessionmaker() as session:
        size = max(len(session.get(OutboxEntry, i).mime) for i in ids)

    def batch(wanted):
        return [copy.outbox_id for copy in deliverer._due_copies(account_id, wanted)]

    assert batch(None) == ids  # within both bounds: all of them, oldest first
    monkeypatch.setattr(outbox, "COPY_BATCH_BYTES", 2 * size + size // 2)
    assert batch(ids[3]) == [ids[0], ids[3]]  # the wanted one and the oldest that fits
    monkeypatch.setattr(outbox, "COPY_BATCH_BYTES", size // 2)
    assert batch(ids[2]) == [ids[2]]  # one too big for the bound still goes, alone
    monkeypatch.setattr(outbox, "COPY_BATCH_BYTES", 100 * size)
    monkeypatch.setattr(outbox, "COPY_BATCH", 3)
    assert batch(ids[3]) == [ids[0], ids[1], ids[3]]
