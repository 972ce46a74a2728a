"""Readable before searchable: the sync stores rows without their search vector, the indexing
job (app.services.indexing) fills it, and the vector is the one the generated column gave."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from sqlalchemy import select, text, update

from app.jobs import INDEX_MESSAGES, QueueName
from app.models import Folder, Message
from app.models.sync import SEARCH_VECTOR
from app.services import indexing
from app.services.messages import _copy_to
from tests.conftest import make_tenant_user
from tests.mailbox import PDF, add_account, message
from tests.services.search_corpus import Mailboxes
from tests.support import run_cli


def html_only(subject: str, html: str) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "Ærø Ltd <news@ærø.example>"
    msg["To"] = "Zoë <zoe@example.test>, team@example.test"
    msg.set_content(html, subtype="html")
    return msg.as_bytes()


CORPUS = [
    message(
        "Grüße aus Köln",
        "Das Treffen ist im Büro am Rhein. Zitronenfalter.",
        sender="Jörg Müller <joerg@example.test>",
        to="Ana Lima <ana.lima@example.test>",
        cc="Dave Smith <dave.smith@example.test>",
    ),
    message("Invoice 2024-001", "Please find the invoice attached.", attachments=[PDF]),
    message("naïve caching", "A naïve approach. " * 2000),  # long: the body is cut at 64 Ki
    message(
        "東京の会議",
        "会議は明日の午後です。 よろしく お願いします",
        sender="山田 <yamada@example.jp>",
    ),
    html_only("Newsletter", "<p>Sale on <b>crème brûlée</b> &amp; <i>smørrebrød</i></p>"),
    message("Alternative", "plain part words", html="<p>html part quokka</p>"),
    message("", ""),  # nothing to index but the addresses
]
QUERIES = [
    "zitronenfalter",
    "buro rhein",
    '"im Büro"',
    "subject:koln",
    "from:müller",
    "smith",
    "to:ana.lima",
    "invoice has:attachment",
    "naive",
    "よろしく",
    "creme brulee",
    "smørrebrød",
    "zoe",
    "plain part words",
    "sender",
]


class Store:
    """Rows written as the sync writes them, in one transaction, deferred or not."""

    def __init__(self, ctx, tenant_id: int, email: str):
        self.ctx = ctx
        self.boxes = Mailboxes(ctx, tenant_id)
        self.account_id = self.boxes.account(email)
        self.inbox = self.boxes.folder(self.account_id, "INBOX", "inbox")

    def store(self, raws: list[bytes], deferred: bool) -> list[int]:
        return [self.boxes.store(self.inbox, raw, deferred=deferred) for raw in raws]

    def subjects(self, query: str) -> list[str]:
        return sorted(h.message.subject or "" for h in self.boxes.search(query).hits)


def unindexed(ctx, account_id: int) -> int:
    with ctx.sessions() as session:
        return indexing.pending(session, account_id)


def test_deferred_vectors_equal_the_generated_ones_and_find_the_same_mail(ctx):
    deferred = Store(ctx, make_tenant_user(ctx, "ix").tenant_id, "deferred@example.test")
    at_once = Store(ctx, make_tenant_user(ctx, "iy").tenant_id, "at-once@example.test")
    deferred.store(CORPUS, deferred=True)
    at_once.store(CORPUS, deferred=False)  # any other writer: the trigger fills it

    # Readable, listed and filtered, but not found by its words yet.
    assert unindexed(ctx, deferred.account_id) == len(CORPUS)
    assert deferred.subjects("zitronenfalter") == []
    assert len(deferred.subjects("in:inbox")) == len(CORPUS)
    assert deferred.subjects("has:attachment") == ["Invoice 2024-001"]
    assert unindexed(ctx, at_once.account_id) == 0

    assert indexing.index_account(ctx, deferred.account_id, rows=3) == len(CORPUS)
    assert unindexed(ctx, deferred.account_id) == 0
    with ctx.sessions() as session:
        differing = session.scalar(
            text(
                f"SELECT count(*) FROM messages WHERE account_id = ANY(:ids) "
                f"AND search_vector IS DISTINCT FROM ({SEARCH_VECTOR})"
            ),
            {"ids": [deferred.account_id, at_once.account_id]},
        )
    assert differing == 0
    for query in QUERIES:
        found = deferred.subjects(query)
        assert found, query
        assert found == at_once.subjects(query), query


def test_every_writer_without_the_sync_s_opt_out_gets_its_vector(ctx):
    """Old code during a rolling upgrade, a moved copy, a direct INSERT or UPDATE: the
    trigger keeps the vector right in the same statement, as the generated column did."""
    box = Store(ctx, make_tenant_user(ctx, "iw").tenant_id, "writer@example.test")
    [plain] = box.store([message("Quarterly figures", "Revenue went up.")], deferred=False)
    [deferred] = box.store([message("Weekly notes", "Nothing new.")], deferred=True)
    vector = f"({SEARCH_VECTOR}) = search_vector"
    with ctx.sessions.begin() as session:
        session.execute(update(Message).where(Message.id == plain).values(subject="Annual figures"))
    archive = box.boxes.folder(box.account_id, "Archive", "archive")
    with ctx.sessions.begin() as session:
        assert session.scalar(text(f"SELECT {vector} FROM messages WHERE id = {plain}"))
        # A moved copy (messages._copy_to) keeps its original's vector, or gets one.
        target = session.get_one(Folder, archive)
        for uid, source in ((900, plain), (901, deferred)):
            _copy_to(session, session.get_one(Message, source), target, uid)
        copies = session.scalars(
            text(f"SELECT {vector} FROM messages WHERE folder_id = {archive}")
        ).all()
        assert copies == [True, True]
    assert box.subjects("annual") == ["Annual figures", "Annual figures"]
    assert box.subjects("weekly") == ["Weekly notes"]  # its copy; the original waits
    assert unindexed(ctx, box.account_id) == 1

    # A change made under the opt-out leaves the vector to the indexing job, not stale.
    with ctx.sessions.begin() as session:
        indexing.defer_search(session)
        session.execute(update(Message).where(Message.id == plain).values(subject="Renamed"))
    assert box.subjects("annual") == ["Annual figures"]  # the copy in Archive
    indexing.index_account(ctx, box.account_id)
    assert box.subjects("renamed") == ["Renamed"]


def queued_index_jobs(ctx) -> list[str]:
    jobs = ctx.jobs.queue(QueueName.DEFAULT).get_jobs()
    return [job.id for job in jobs if job.func_name == INDEX_MESSAGES.func]


def test_an_indexing_job_lost_midway_is_completed_by_the_catch_up(ctx, env, tmp_path, empty_queues):
    indexing.index_messages(ctx)  # what earlier tests left: this account is the only one
    box = Store(ctx, make_tenant_user(ctx, "il").tenant_id, "lost@example.test")
    box.store([message(f"Report {i}", f"word{i} pelican") for i in range(10)], deferred=True)

    # A job that ran out of time after its first batches hands over to its continuation ...
    indexing.index_messages(ctx, seconds=0, rows=3)
    assert 0 < unindexed(ctx, box.account_id) < 10
    assert len(queued_index_jobs(ctx)) == 1
    # ... which is lost (a Redis outage, a worker killed before it ran it).
    ctx.jobs.queue(QueueName.DEFAULT).empty()
    assert len(box.subjects("pelican")) < 10

    # The scheduler's sweep (every minute, and at each worker's start) queues it again, once.
    assert indexing.index_pending(ctx)
    assert indexing.index_pending(ctx)
    assert len(queued_index_jobs(ctx)) == 1
    result = run_cli(["worker", "--burst", "default"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert unindexed(ctx, box.account_id) == 0
    assert len(box.subjects("pelican")) == 10


def test_a_synced_mailbox_is_readable_at_once_and_searchable_once_a_worker_indexed_it(
    ctx, env, tmp_path, client, tenant_a, mailbox, make_syncer, empty_queues
):
    account_id = add_account(ctx, tenant_a.tenant_id, mailbox)
    mailbox.append("INBOX", message("Grüße", "Zitronenfalter im Büro"))
    mailbox.append("Archive", message("Old", "zitronenfalter archived"))
    assert make_syncer().sync_account(account_id).complete
    tenant = Mailboxes(ctx, tenant_a.tenant_id)

    # Listed and readable; not found by its words until it is indexed.
    assert {h.message.subject for h in tenant.search(f"account:{account_id}").hits} == {
        "Grüße",
        "Old",
    }
    assert tenant.search("zitronenfalter").hits == []
    assert unindexed(ctx, account_id) == 2
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers)
    assert status.get_json()["progress"]["messages_indexing"] == 2
    # One job for both folders: one waits at a time.
    assert len(queued_index_jobs(ctx)) == 1

    result = run_cli(["worker", "--burst", "default"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert unindexed(ctx, account_id) == 0
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers)
    assert status.get_json()["progress"]["messages_indexing"] == 0
    assert {h.message.subject for h in tenant.search("zitronenfalter buro").hits} == {"Grüße"}
    assert {h.message.subject for h in tenant.search("zitronenfalter").hits} == {"Grüße", "Old"}


@pytest.mark.parametrize("rows", [1, 200])
def test_the_job_gives_every_account_a_batch_in_turn(ctx, rows):
    """A large mailbox never holds back a small one: each round indexes one batch of each."""
    big = Store(ctx, make_tenant_user(ctx, "ib").tenant_id, "big@example.test")
    small = Store(ctx, make_tenant_user(ctx, "is").tenant_id, "small@example.test")
    big.store([message(f"Big {i}", "bulk") for i in range(30)], deferred=True)
    small.store([message("Small", "urgent")], deferred=True)
    with ctx.sessions() as session:
        accounts = indexing.unindexed_accounts(session)
    assert {big.account_id, small.account_id} <= set(accounts)
    # The first round is enough for the small one, however small the batches.
    for account_id in accounts:
        with ctx.sessions.begin() as session:
            indexing.index_batch(session, account_id, rows)
    assert unindexed(ctx, small.account_id) == 0
    assert unindexed(ctx, big.account_id) == max(0, 30 - rows)
    indexing.index_messages(ctx)
    assert unindexed(ctx, big.account_id) == 0
    with ctx.sessions() as session:
        assert session.scalar(
            select(Message.search_vector.is_not(None)).where(Message.account_id == big.account_id)
        )
