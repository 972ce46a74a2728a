"""Delivering outbox entries: real Postfix submission with SASL into real Dovecot, and an SMTP
peer of the test's own for what Postfix will not do on request (drop the connection after the
final "." or in the middle of the payload).
"""

from __future__ import annotations

import email
import time
from email import policy

import pytest
from sqlalchemy import update

from app.models import Account, OutboxEntry
from app.services.accounts import ServerFields
from app.services.compose import DraftContent, create_draft, send_draft
from app.services.outbox import Deliverer, RetryPolicy
from app.states import Security
from tests.mailbox import UserPool, add_account
from tests.smtp_peer import SmtpPeer, relay_to
from tests.support import wait_for

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 300  # 77 KB: the payload spans many writes


@pytest.fixture
def mailbox(stack_control, user_pools):
    """The sender (one kind of Dovecot is enough here: the send path reads no CONDSTORE)."""
    return user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()


@pytest.fixture
def recipient(stack_control, user_pools):
    return user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()


@pytest.fixture
def deliverer(ctx):
    return Deliverer(ctx, RetryPolicy(max_attempts=3))


def make_account(ctx, tenant_id, mailbox, smtp: ServerFields | None = None) -> int:
    return add_account(ctx, tenant_id, mailbox, display_name="Zoë Sender", smtp=smtp)


def queue(ctx, tenant_id: int, account_id: int, to: list[str], **content) -> int:
    """A draft, sent: the id of its queued outbox entry."""
    fields = {
        "cc": [],
        "bcc": [],
        "subject": "Hello",
        "text": "Hi.",
        "html": None,
        "in_reply_to": None,
        "attachments": [],
        **content,
    }
    with ctx.work(tenant_id) as unit:
        view = create_draft(unit, DraftContent(account_id, to, **fields))
        return send_draft(unit, view.draft.id, None).id


def entry(db_sessionmaker, outbox_id: int) -> OutboxEntry:
    with db_sessionmaker() as session:
        return session.get(OutboxEntry, outbox_id)


def inbox(mailbox, folder: str = "INBOX") -> list[email.message.EmailMessage]:
    with mailbox.client() as client:
        if not client.folder_exists(folder):
            return []
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
        return [
            email.message_from_bytes(data[b"BODY[]"], policy=policy.default)
            for data in fetched.values()
        ]


def arrived(mailbox, message_id: str, count: int = 1, folder: str = "INBOX"):
    """Wait until `count` copies of the message are in the folder; return them."""

    def copies():
        found = [m for m in inbox(mailbox, folder) if m["Message-ID"] == message_id]
        return found if len(found) >= count else None

    return wait_for(copies, timeout=30, interval=0.3)


def test_a_message_arrives_intact_and_sent_holds_one_copy(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, deliverer
):
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    outbox_id = queue(
        ctx,
        tenant_a.tenant_id,
        account_id,
        [f"Jörg Müller <{recipient.email}>"],
        bcc=["hidden@example.test"],
        subject="Grüße aus Köln ☃",
        text="Hallo Jörg,\n.\nein Punkt allein auf einer Zeile.\n",
        html="<p>Hallo <b>Jörg</b></p>",
        attachments=[("Bericht März.pdf", "application/pdf", PDF)],
    )
    outcome = deliverer.deliver(outbox_id)
    assert (outcome.state, outcome.copy) == ("sent", True)
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.state, sent.attempts, sent.sent_copy) == ("sent", 1, "pending")
    assert sent.smtp_reply.startswith("250")

    (got,) = arrived(recipient, sent.message_id)
    assert str(got["Subject"]) == "Grüße aus Köln ☃"
    assert got["To"].addresses[0].display_name == "Jörg Müller"
    assert got["From"].addresses[0].display_name == "Zoë Sender"
    assert got["From"].addresses[0].addr_spec == mailbox.email
    assert got["Bcc"] is None and "hidden@example.test" not in got.as_string()
    assert got.get_body(("plain",)).get_content().replace("\r\n", "\n") == (
        "Hallo Jörg,\n.\nein Punkt allein auf einer Zeile.\n"
    )
    assert "<b>Jörg</b>" in got.get_body(("html",)).get_content()
    (attachment,) = got.iter_attachments()
    assert attachment.get_filename() == "Bericht März.pdf"
    assert attachment.get_content() == PDF

    assert deliverer.file_sent_copy(outbox_id).state == "done"
    # Filing again (a retry after a lost APPEND reply) finds the copy and adds none.
    with db_sessionmaker() as session:
        session.execute(
            update(OutboxEntry).where(OutboxEntry.id == outbox_id).values(sent_copy="pending")
        )
        session.commit()
    assert deliverer.file_sent_copy(outbox_id).state == "done"
    copies = [m for m in inbox(mailbox, "Sent") if m["Message-ID"] == sent.message_id]
    assert len(copies) == 1
    with mailbox.client() as client:
        client.select_folder("Sent", readonly=True)
        flags = client.get_flags(client.search(["HEADER", "Message-ID", sent.message_id]))
        assert [b"\\Seen" in f for f in flags.values()] == [True]

    # Delivering again does nothing: the entry is sent.
    assert deliverer.deliver(outbox_id).state == "sent"
    time.sleep(1)
    assert len(arrived(recipient, sent.message_id)) == 1


def test_postfix_down_is_retried_and_sent_once_when_it_is_back(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, deliverer, stack_control
):
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    stack_control.stop_service("postfix")
    try:
        outcome = deliverer.deliver(outbox_id)
        assert outcome.state == "queued" and outcome.retry_in is not None
        waiting = entry(db_sessionmaker, outbox_id)
        assert (waiting.attempts, waiting.dot_sent_at) == (1, None)
        assert "connection" in waiting.last_error.lower()
    finally:
        stack_control.start_service("postfix")
    assert deliverer.deliver(outbox_id).state == "sent"
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.attempts, sent.last_error) == (2, None)
    arrived(recipient, sent.message_id)
    time.sleep(1)
    assert len(arrived(recipient, sent.message_id)) == 1


def test_giving_up_after_the_last_attempt(ctx_allowing, db_sessionmaker, tenant_a, mailbox):
    from tests.support import free_port

    port = free_port()
    ctx = ctx_allowing(f"127.0.0.1:{port}")
    deliverer = Deliverer(ctx, RetryPolicy(max_attempts=3))
    dead = ServerFields("127.0.0.1", port, Security.NONE, mailbox.email, mailbox.password)
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox, smtp=dead)
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
    states = [deliverer.deliver(outbox_id) for _ in range(3)]
    assert [o.state for o in states] == ["queued", "queued", "failed"]
    assert states[-1].retry_in is None
    failed = entry(db_sessionmaker, outbox_id)
    assert failed.attempts == 3 and failed.last_error.startswith("gave up after 3 attempts")
    assert "connection refused" in failed.last_error


def test_a_wrong_password_fails_at_once_with_the_servers_reason(
    ctx, db_sessionmaker, tenant_a, mailbox, deliverer
):
    wrong = ServerFields(
        mailbox.host, mailbox.submission_port, Security.STARTTLS, mailbox.email, "not-the-password"
    )
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox, smtp=wrong)
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
    outcome = deliverer.deliver(outbox_id)
    assert (outcome.state, outcome.retry_in) == ("failed", None)
    failed = entry(db_sessionmaker, outbox_id)
    assert failed.attempts == 1
    assert "535" in failed.last_error  # Postfix's "authentication failed"
    assert deliverer.deliver(outbox_id).state == "failed"  # no second attempt
    assert entry(db_sessionmaker, outbox_id).attempts == 1


def test_a_5xx_for_every_recipient_is_failed(ctx, db_sessionmaker, tenant_a, mailbox, deliverer):
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    # The stack's Postfix knows its domain's users and refuses unknown ones at RCPT (550).
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["nosuchuser@example.test"])
    outcome = deliverer.deliver(outbox_id)
    assert outcome.state == "failed"
    assert "550" in entry(db_sessionmaker, outbox_id).last_error


def peer_account(ctx, tenant_id, mailbox, peer: SmtpPeer) -> int:
    smtp = ServerFields("127.0.0.1", peer.port, Security.NONE, mailbox.email, "any")
    return make_account(ctx, tenant_id, mailbox, smtp=smtp)


def peer_deliverer(ctx_allowing, peer: SmtpPeer):
    """A context whose host policy allows the peer, and a deliverer on it."""
    ctx = ctx_allowing(f"127.0.0.1:{peer.port}")
    return ctx, Deliverer(ctx, RetryPolicy(max_attempts=3))


def test_no_reply_after_the_final_dot_is_uncertain_and_never_retried(
    ctx_allowing, db_sessionmaker, tenant_a, mailbox
):
    with SmtpPeer() as peer:
        peer.scripts = ["close_after_dot"]
        ctx, deliverer = peer_deliverer(ctx_allowing, peer)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
        outcome = deliverer.deliver(outbox_id)
        assert (outcome.state, outcome.retry_in) == ("uncertain", None)
        assert deliverer.deliver(outbox_id).state == "uncertain"
        assert peer.sessions == 1
    uncertain = entry(db_sessionmaker, outbox_id)
    assert uncertain.attempts == 1 and "may have accepted" in uncertain.last_error


def test_a_connection_lost_mid_payload_is_retried_and_delivered_once(
    ctx_allowing, db_sessionmaker, tenant_a, mailbox
):
    with SmtpPeer() as peer:
        peer.scripts = ["close_mid_payload"]
        ctx, deliverer = peer_deliverer(ctx_allowing, peer)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        outbox_id = queue(
            ctx,
            tenant_a.tenant_id,
            account_id,
            ["x@example.test"],
            attachments=[("big.pdf", "application/pdf", PDF * 4)],
        )
        first = deliverer.deliver(outbox_id)
        assert first.state == "queued" and first.retry_in is not None
        assert peer.received == []
        assert deliverer.deliver(outbox_id).state == "sent"
        assert len(peer.received) == 1
    sent = entry(db_sessionmaker, outbox_id)
    assert sent.attempts == 2
    assert email.message_from_bytes(peer.received[0])["Message-ID"] == sent.message_id


def test_an_entry_left_sending_is_settled_by_whether_its_dot_went_out(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, deliverer
):
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    before_dot = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    after_dot = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    # Its worker died before the "." on every one of its 3 attempts (the deliverer's limit).
    killer = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    with db_sessionmaker() as session:
        for outbox_id, dot, attempts in (
            (before_dot, None, 1),
            (after_dot, 1, 1),
            (killer, None, 3),
        ):
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == outbox_id)
                .values(
                    state="sending",
                    attempts=attempts,
                    dot_sent_at=dot and OutboxEntry.created_at,
                )
            )
        session.commit()
    send, copy = deliverer.sweep()
    assert before_dot in send and after_dot not in send and killer not in send
    assert entry(db_sessionmaker, before_dot).state == "queued"
    assert entry(db_sessionmaker, after_dot).state == "uncertain"
    assert entry(db_sessionmaker, killer).state == "failed"
    assert deliverer.deliver(before_dot).state == "sent"
    assert deliverer.deliver(after_dot).state == "uncertain"


def test_a_relayed_peer_session_reaches_the_mailbox(
    ctx_allowing, db_sessionmaker, tenant_a, mailbox, recipient, stack
):
    """The peer used by the worker tests passes what it accepts on to the real Postfix."""
    with SmtpPeer(relay=relay_to(stack.host, stack.smtp_port)) as peer:
        ctx, deliverer = peer_deliverer(ctx_allowing, peer)
        account_id = peer_account(ctx, tenant_a.tenant_id, mailbox, peer)
        outbox_id = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
        assert deliverer.deliver(outbox_id).state == "sent"
    arrived(recipient, entry(db_sessionmaker, outbox_id).message_id)


def test_a_failing_sent_copy_is_retried_without_sending_again(
    ctx, db_sessionmaker, tenant_a, mailbox, recipient, deliverer
):
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    assert deliverer.deliver(outbox_id).state == "sent"
    box = ctx.secrets
    with db_sessionmaker() as session:  # the IMAP password changed meanwhile
        account = session.get(Account, account_id)
        account.imap_password_encrypted = box.encrypt("no longer right")
        session.commit()
    outcome = deliverer.file_sent_copy(outbox_id)
    assert outcome.state == "pending" and outcome.retry_in is not None
    waiting = entry(db_sessionmaker, outbox_id)
    assert (waiting.state, waiting.sent_copy, waiting.sent_copy_attempts) == ("sent", "pending", 1)
    assert "login" in waiting.sent_copy_error.lower()
    assert deliverer.deliver(outbox_id).state == "sent"  # nothing is sent again
    with db_sessionmaker() as session:
        session.get(Account, account_id).imap_password_encrypted = box.encrypt(mailbox.password)
        session.commit()
    assert deliverer.file_sent_copy(outbox_id).state == "done"
    sent = entry(db_sessionmaker, outbox_id)
    assert len([m for m in inbox(mailbox, "Sent") if m["Message-ID"] == sent.message_id]) == 1
    time.sleep(1)
    assert len(arrived(recipient, sent.message_id)) == 1


# -- outages of PostgreSQL and Redis around a send ------------------------------------------


def proxied_context(env, ctx, database_proxy=None, redis_url=None, *pairs: str):
    """A context like `ctx` whose PostgreSQL is reached through `database_proxy` (a TcpProxy a
    test switches off to play an outage) and whose Redis is `redis_url`, when given."""
    from sqlalchemy.engine import make_url

    from app.config import Settings
    from app.context import ServiceContext
    from tests.support import allowing

    settings = dict(env, ALLOWED_PRIVATE_HOSTS=",".join(ctx.settings.allowed_private_hosts))
    if database_proxy is not None:
        url = make_url(env["DATABASE_URL"]).set(host="127.0.0.1", port=database_proxy.port)
        settings["DATABASE_URL"] = url.render_as_string(hide_password=False)
    if redis_url is not None:
        settings["REDIS_URL"] = redis_url
    return ServiceContext.build(Settings.from_mapping(allowing(settings, *pairs)))


@pytest.fixture
def database_proxy(env):
    from sqlalchemy.engine import make_url

    from tests.support import TcpProxy

    url = make_url(env["DATABASE_URL"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    yield proxy
    proxy.stop()


def deliver_in_background(deliverer, outbox_id):
    import threading

    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("outcome", deliverer.deliver(outbox_id)), daemon=True
    )
    thread.start()
    return thread, result


def test_a_database_outage_right_after_the_250_still_ends_sent(
    env, ctx, db_sessionmaker, tenant_a, mailbox, database_proxy
):
    """The worker holds the 250 while the database is away: it keeps trying to record it and
    does, even though a sweep meanwhile took the entry for a dead worker's (`uncertain`)."""
    with SmtpPeer() as peer:
        peer.scripts = ["hold_after_dot"]
        cut_off = proxied_context(env, ctx, database_proxy, None, f"127.0.0.1:{peer.port}")
        try:
            account_id = peer_account(cut_off, tenant_a.tenant_id, mailbox, peer)
            outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
            thread, result = deliver_in_background(
                Deliverer(cut_off, RetryPolicy(max_attempts=3)), outbox_id
            )
            assert peer.holding.wait(30)
            database_proxy.stop()  # every connection of the worker cut, its lock gone with them
            peer.release.set()  # ... and the server says 250 now
            time.sleep(1)
            # The sweep (on a database connection that works) finds `sending`, the "." out and
            # nobody holding the lock: it cannot tell, so it guesses uncertain.
            Deliverer(ctx, RetryPolicy(max_attempts=3)).sweep()
            assert entry(db_sessionmaker, outbox_id).state == "uncertain"
            assert thread.is_alive()  # the worker is still trying to record the 250
            time.sleep(3)
            database_proxy.start()
            thread.join(30)
            assert not thread.is_alive()
        finally:
            cut_off.close()
    assert result["outcome"].state == "sent" and result["outcome"].copy
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.state, sent.last_error, sent.attempts) == ("sent", None, 1)
    assert sent.smtp_reply.startswith("250") and "PEER1" in sent.smtp_reply
    assert sent.sent_copy == "pending"
    assert peer.sessions == 1 and len(peer.received) == 1


def test_an_acceptance_that_outlasts_the_database_outage_is_kept_and_settled_as_sent(
    env, ctx, db_sessionmaker, tenant_a, mailbox, database_proxy, redis_client
):
    from app.services.outbox import ACCEPTED_KEY

    with SmtpPeer() as peer:
        peer.scripts = ["hold_after_dot"]
        cut_off = proxied_context(env, ctx, database_proxy, None, f"127.0.0.1:{peer.port}")
        try:
            account_id = peer_account(cut_off, tenant_a.tenant_id, mailbox, peer)
            outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
            # The job's deadline for recording, shortened to 2 s for the test.
            deliverer = Deliverer(cut_off, RetryPolicy(max_attempts=3), record_seconds=2)
            thread, result = deliver_in_background(deliverer, outbox_id)
            assert peer.holding.wait(30)
            database_proxy.stop()
            peer.release.set()
            thread.join(30)
            assert not thread.is_alive()
        finally:
            cut_off.close()
    assert result["outcome"].state == "sent"
    # Not in the database (it stayed away), but kept in Redis.
    assert entry(db_sessionmaker, outbox_id).state == "sending"
    kept = redis_client.hget(ACCEPTED_KEY, str(outbox_id))
    assert kept is not None and b"PEER1" in kept
    send, copy = Deliverer(ctx, RetryPolicy(max_attempts=3)).sweep()
    assert outbox_id in copy and outbox_id not in send
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.state, sent.last_error, sent.sent_copy) == ("sent", None, "pending")
    assert "PEER1" in sent.smtp_reply
    assert redis_client.hget(ACCEPTED_KEY, str(outbox_id)) is None
    assert peer.sessions == 1


def test_a_database_outage_before_the_dot_waits_and_sends_once(
    env, ctx, db_sessionmaker, tenant_a, mailbox, recipient, database_proxy, stack
):
    """The worker marks the "." before sending it; a short outage at that moment delays the
    "." (the server waits) instead of failing the attempt."""
    import threading

    with SmtpPeer(relay=relay_to(stack.host, stack.smtp_port)) as peer:
        cut_off = proxied_context(env, ctx, database_proxy, None, f"127.0.0.1:{peer.port}")
        try:
            account_id = peer_account(cut_off, tenant_a.tenant_id, mailbox, peer)
            outbox_id = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
            deliverer = Deliverer(cut_off, RetryPolicy(max_attempts=3))
            marked = threading.Event()
            original = deliverer._mark_dot

            def mark_during_an_outage(*args) -> None:
                database_proxy.stop()
                threading.Timer(3, database_proxy.start).start()
                marked.set()
                original(*args)

            deliverer._mark_dot = mark_during_an_outage
            outcome = deliverer.deliver(outbox_id)
        finally:
            cut_off.close()
    assert marked.is_set() and outcome.state == "sent"
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.state, sent.attempts, sent.last_error) == ("sent", 1, None)
    assert sent.dot_sent_at is not None
    arrived(recipient, sent.message_id)
    time.sleep(1)
    assert len(arrived(recipient, sent.message_id)) == 1


def test_a_committed_send_is_answered_when_redis_is_down_and_a_retry_enqueues_it(
    env, ctx, db_sessionmaker, tenant_a, mailbox, recipient, empty_queues
):
    from app.jobs import Jobs
    from app.services.outbox import send_job_id
    from tests.support import free_port

    no_redis = proxied_context(env, ctx, None, f"redis://127.0.0.1:{free_port()}/0")
    try:
        account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
        with ctx.work(tenant_a.tenant_id) as unit:
            draft_id = create_draft(
                unit,
                DraftContent(account_id, [recipient.email], [], [], "Hi", "Hi.", None, None, []),
            ).draft.id
        with no_redis.work(tenant_a.tenant_id) as unit:
            queued = send_draft(unit, draft_id, "key-redis-down")  # no exception: answered
    finally:
        no_redis.close()
    stored = entry(db_sessionmaker, queued.id)
    assert (stored.state, stored.attempts) == ("queued", 0)
    job_id = send_job_id(queued.id, 0)
    jobs = Jobs(ctx.redis)
    assert jobs.state(job_id) is None  # nothing was enqueued
    # The client retries with the same key: the same entry, and now its job.
    with ctx.work(tenant_a.tenant_id) as unit:
        again = send_draft(unit, draft_id, "key-redis-down")
    assert again.id == queued.id
    assert jobs.state(job_id) == "queued"
    depth = jobs.depths()["send"]
    with ctx.work(tenant_a.tenant_id) as unit:  # a third time: its job is there, no other
        assert send_draft(unit, draft_id, "key-redis-down").id == queued.id
    assert jobs.depths()["send"] == depth


def test_a_send_that_ends_while_redis_is_down_is_counted_once_it_is_back(
    env, ctx, db_sessionmaker, tenant_a, mailbox, recipient, redis_client, empty_queues, caplog
):
    import threading
    from urllib.parse import urlsplit

    from app.services.outbox import send
    from app.telemetry import SEND_OUTCOME_KEY
    from tests.support import TcpProxy

    redis = urlsplit(env["REDIS_URL"])
    proxy = TcpProxy((redis.hostname, redis.port))  # not started: Redis is down
    proxied = redis._replace(netloc=redis.netloc.replace(f":{redis.port}", f":{proxy.port}"))
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    outbox_id = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    before = int(redis_client.hget(SEND_OUTCOME_KEY, "sent") or 0)
    no_redis = proxied_context(env, ctx, None, proxied.geturl())
    back = threading.Timer(5.0, proxy.start)  # long after Postfix's 250
    back.start()
    try:
        assert send(no_redis, outbox_id) == "sent"
    finally:
        back.join()
        no_redis.close()
        proxy.stop()
    assert "counting the outcome of a send: a dependency is unavailable" in caplog.text
    assert int(redis_client.hget(SEND_OUTCOME_KEY, "sent")) == before + 1
    assert entry(db_sessionmaker, outbox_id).state == "sent"
    arrived(recipient, entry(db_sessionmaker, outbox_id).message_id)


def test_the_sweep_queues_a_due_entry_whose_job_redis_never_got(
    env, ctx, db_sessionmaker, tenant_a, mailbox, recipient, empty_queues
):
    from datetime import datetime, timedelta, timezone

    from app.jobs import Jobs
    from app.services.outbox import recover, send_job_id
    from tests.support import free_port

    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    no_redis = proxied_context(env, ctx, None, f"redis://127.0.0.1:{free_port()}/0")
    try:
        lost = queue(no_redis, tenant_a.tenant_id, account_id, [recipient.email])
    finally:
        no_redis.close()
    waiting = queue(ctx, tenant_a.tenant_id, account_id, [recipient.email])
    assert Jobs(ctx.redis).state(send_job_id(waiting, 0)) == "queued"
    earlier = datetime.now(timezone.utc) - timedelta(seconds=20)
    with db_sessionmaker() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id.in_([lost, waiting]))
            .values(next_attempt_at=earlier)
        )
        session.commit()
    send, _ = Deliverer(ctx).sweep()
    assert lost in send  # its job is missing: queued again
    assert waiting not in send  # its job waits in a busy queue: left alone
    assert recover(ctx) >= 1  # the periodic sweep's job: enqueues the lost one's job
    assert Jobs(ctx.redis).state(send_job_id(lost, 0)) == "queued"


def test_no_reply_during_a_database_outage_is_uncertain_with_what_really_happened(
    env, ctx, db_sessionmaker, tenant_a, mailbox, database_proxy
):
    """A sweep takes the cut-off worker for dead and writes "the worker stopped"; the worker,
    back on the database, replaces that guess with what happened: no reply after the "."."""
    import threading

    from app.services.outbox import DIED_SENDING

    with SmtpPeer() as peer:
        peer.scripts = ["close_after_dot"]
        cut_off = proxied_context(env, ctx, database_proxy, None, f"127.0.0.1:{peer.port}")
        try:
            account_id = peer_account(cut_off, tenant_a.tenant_id, mailbox, peer)
            outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
            deliverer = Deliverer(cut_off, RetryPolicy(max_attempts=3))
            original = deliverer._mark_dot
            sweeper = Deliverer(ctx, RetryPolicy(max_attempts=3))

            def marked_then_cut_off(outbox_id: int, attempts: int) -> None:
                original(outbox_id, attempts)
                database_proxy.stop()
                wait_for(
                    lambda: (
                        sweeper.sweep() is not None
                        and entry(db_sessionmaker, outbox_id).state == "uncertain"
                    ),
                    timeout=15,
                )
                assert entry(db_sessionmaker, outbox_id).last_error == DIED_SENDING
                threading.Timer(2, database_proxy.start).start()

            deliverer._mark_dot = marked_then_cut_off
            outcome = deliverer.deliver(outbox_id)
        finally:
            cut_off.close()
    assert outcome.state == "uncertain"
    uncertain = entry(db_sessionmaker, outbox_id)
    assert uncertain.state == "uncertain" and uncertain.attempts == 1
    assert uncertain.last_error != DIED_SENDING
    assert uncertain.last_error.startswith("no reply after the message was sent")


def test_a_worker_cut_off_before_the_dot_whose_entry_was_requeued_never_sends_it(
    env, ctx, db_sessionmaker, tenant_a, mailbox, database_proxy
):
    """Cut off from the database, the worker lost its lock and a sweep queued the entry again
    (its "." had not gone out): when the database returns, the worker must not send the "."
    (another worker now owns the entry), so the message goes out once, by the next attempt."""
    with SmtpPeer() as peer:
        cut_off = proxied_context(env, ctx, database_proxy, None, f"127.0.0.1:{peer.port}")
        try:
            account_id = peer_account(cut_off, tenant_a.tenant_id, mailbox, peer)
            outbox_id = queue(ctx, tenant_a.tenant_id, account_id, ["x@example.test"])
            deliverer = Deliverer(cut_off, RetryPolicy(max_attempts=3))
            original = deliverer._mark_dot
            sweeper = Deliverer(ctx, RetryPolicy(max_attempts=3))

            def requeued_meanwhile(*args) -> None:
                database_proxy.stop()
                wait_for(
                    lambda: (
                        sweeper.sweep() is not None
                        and entry(db_sessionmaker, outbox_id).state == "queued"
                    ),
                    timeout=15,
                )
                database_proxy.start()
                original(*args)

            deliverer._mark_dot = requeued_meanwhile
            outcome = deliverer.deliver(outbox_id)
            assert outcome.state == "lost"
            assert peer.received == []  # no "." went out: the server kept nothing
            # The next attempt (the database back) sends it.
            assert (
                Deliverer(cut_off, RetryPolicy(max_attempts=3)).deliver(outbox_id).state == "sent"
            )
        finally:
            cut_off.close()
    assert len(peer.received) == 1
    sent = entry(db_sessionmaker, outbox_id)
    assert (sent.state, sent.attempts) == ("sent", 2)


def test_a_send_job_takes_its_accounts_further_due_entries_within_its_bound(
    ctx, db_sessionmaker, tenant_a, tenant_b, mailbox, recipient, empty_queues, monkeypatch
):
    """One job sends what its account has due on its session, each one's own job taken from
    the queue (no worker runs it as well), up to SEND_BATCH; another account's entries and
    the entries beyond the bound keep their jobs; one Sent-copy job files the copies."""
    from app.jobs import FILE_SENT_COPY, SEND_MESSAGE
    from app.services import outbox

    monkeypatch.setattr(outbox, "SEND_BATCH", 3)
    account_id = make_account(ctx, tenant_a.tenant_id, mailbox)
    other = make_account(ctx, tenant_b.tenant_id, recipient)
    ids = [queue(ctx, tenant_a.tenant_id, account_id, [recipient.email]) for _ in range(6)]
    elsewhere = queue(ctx, tenant_b.tenant_id, other, [mailbox.email])
    send_queue = ctx.jobs.queue(SEND_MESSAGE.queue)
    assert set(send_queue.get_job_ids()) >= {outbox.send_job_id(i, 0) for i in ids}
    send_queue.empty()  # ids[0]'s job is this call; the others' are queued again below
    for outbox_id in [*ids[1:], elsewhere]:
        ctx.jobs.enqueue(SEND_MESSAGE, outbox_id, job_id=outbox.send_job_id(outbox_id, 0))
    # ids[2]'s job was dequeued by another worker meanwhile: not taken from it.
    assert send_queue.remove(outbox.send_job_id(ids[2], 0)) == 1

    assert outbox.send(ctx, ids[0]) == "sent"

    states = {i: entry(db_sessionmaker, i).state for i in [*ids, elsewhere]}
    taken = [ids[0], ids[1], ids[3], ids[4]]  # the first, then three (the bound)
    assert [i for i, state in states.items() if state == "sent"] == taken
    waiting = send_queue.get_job_ids()
    assert sorted(waiting) == sorted(outbox.send_job_id(i, 0) for i in (ids[5], elsewhere))
    assert all(ctx.jobs.state(outbox.send_job_id(i, 0)) is None for i in taken[1:])
    copies = ctx.jobs.queue(FILE_SENT_COPY.queue).scheduled_job_registry.get_job_ids()
    assert len(copies) == 1
    assert outbox.file_copy(ctx, ids[0]) == "done"
    assert all(entry(db_sessionmaker, i).sent_copy == "done" for i in taken)
    for outbox_id in taken:
        arrived(recipient, entry(db_sessionmaker, outbox_id).message_id)
