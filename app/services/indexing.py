"""Search vectors computed after the sync stored the rows: readable first, searchable soon after.

The sync stores its batches with the search vector deferred (`defer_search`): a message is
listed and readable as soon as its batch commits, and its `search_vector` stays NULL until
the indexing job of its account fills it, in short batches of
`UPDATE ... SET search_vector = message_search_vector(...)` (the very expression the column
was generated with before migration 0011, so the vector is the same).

Who runs it: one job of the service's own (INDEX_MESSAGES, not a tenant's), which takes one
batch of every account with rows to index in turn, round after round, so no tenant waits
behind another's large mailbox; it stops after JOB_SECONDS and enqueues its continuation.
- The sync requests it at the end of each run that stored new mail (`request_index`: at
  most one job waits at a time; a Redis failure only delays it). A sync job's run is bounded
  (SYNC_JOB_MAX_MESSAGES), so a long first sync becomes searchable run by run, each run's
  mail indexed while the next run fetches.
- The scheduler's minute-by-minute resume of interrupted work (workers.jobs.resume_syncs)
  requests it when rows are left unindexed (`index_pending`): rows a killed worker, a lost
  job or a Redis outage left behind are indexed within a minute or so; nothing stays
  unsearchable.

Each batch is one short transaction that locks only its own rows (FOR UPDATE SKIP LOCKED):
two jobs running at once share the work, and a job never waits on the sync.

Every other writer of messages (a moved copy, old code during a rolling upgrade, a direct
INSERT) gets its vector from the trigger of migration 0011 in its own statement.
"""

from __future__ import annotations

import logging
import time
import uuid

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.context import REDIS_ERRORS, ServiceContext
from app.jobs import INDEX_MESSAGES
from app.models import Message

log = logging.getLogger(__name__)

# Rows per UPDATE: a transaction of a fraction of a second, big enough that the per-statement
# overhead does not count.
BATCH_ROWS = 200
# A job's share of a worker before it hands over to its continuation.
JOB_SECONDS = 30.0
# Accounts a round looks at (the next round takes the rest).
ROUND_ACCOUNTS = 1000
# While a job waits, its id is kept here (one waiting job is enough).
JOB_KEY = "emailservice:index:job"

_INDEX_BATCH = text(
    """
UPDATE messages m
SET search_vector = message_search_vector(
    m.subject, m.from_name, m.from_email, m.recipients, m.text_body)
WHERE m.id IN (
    SELECT id FROM messages
    WHERE account_id = :account_id AND search_vector IS NULL
    ORDER BY id
    LIMIT :rows
    FOR UPDATE SKIP LOCKED
)
"""
)


def defer_search(session: Session) -> None:
    """Store this transaction's message rows without their search vector (the indexing job
    computes it): the trigger of migration 0011 leaves it NULL."""
    session.execute(text("SELECT set_config('emailservice.defer_search', 'on', true)"))


def request_index(ctx: ServiceContext) -> str | None:
    """Enqueue the indexing job unless one is waiting already; its id (None when Redis did
    not answer: the scheduler's catch-up requests it later)."""
    try:
        waiting = ctx.redis.get(JOB_KEY)
        if waiting is not None:
            job_id = waiting.decode() if isinstance(waiting, bytes) else str(waiting)
            if ctx.jobs.waiting(job_id):
                return job_id
        job_id = f"index-{uuid.uuid4().hex[:12]}"
        ctx.jobs.enqueue(INDEX_MESSAGES, job_id=job_id)
        ctx.redis.set(JOB_KEY, job_id, ex=INDEX_MESSAGES.timeout * 2)
        return job_id
    except REDIS_ERRORS as exc:
        log.warning("indexing job not enqueued; the catch-up will", extra={"error": str(exc)})
        return None


def index_batch(session: Session, account_id: int, rows: int = BATCH_ROWS) -> int:
    """Compute the vectors of up to `rows` of the account's unindexed messages; how many."""
    result = session.execute(_INDEX_BATCH, {"account_id": account_id, "rows": rows})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def unindexed_accounts(session: Session, limit: int = ROUND_ACCOUNTS) -> list[int]:
    """Accounts with messages not searchable yet (read from ix_messages_unindexed)."""
    return list(
        session.scalars(
            select(Message.account_id)
            .where(Message.search_vector.is_(None))
            .distinct()
            .order_by(Message.account_id)
            .limit(limit)
        )
    )


def index_messages(
    ctx: ServiceContext, seconds: float = JOB_SECONDS, rows: int = BATCH_ROWS
) -> int:
    """The indexing job: one batch per account with work left, round after round, each batch
    its own transaction, for at most `seconds` (then its continuation is enqueued); how many
    rows it indexed."""
    started, indexed = time.monotonic(), 0
    while True:
        with ctx.sessions() as session:
            accounts = unindexed_accounts(session)
        round_indexed = 0
        for account_id in accounts:
            with ctx.sessions.begin() as session:
                round_indexed += index_batch(session, account_id, rows)
            if time.monotonic() - started >= seconds:
                indexed += round_indexed
                request_index(ctx)
                return indexed
        indexed += round_indexed
        if round_indexed == 0:
            # Nothing left, or only rows another job holds right now (it finishes them).
            return indexed


def index_account(ctx: ServiceContext, account_id: int, rows: int = BATCH_ROWS) -> int:
    """Index all of one account's messages now, in this process (`emailservice sync`, which
    runs without workers); how many."""
    indexed = 0
    while True:
        with ctx.sessions.begin() as session:
            done = index_batch(session, account_id, rows)
        indexed += done
        if done == 0:
            return indexed


def pending(session: Session, account_id: int) -> int:
    """How many of the account's messages are not searchable by words yet."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.account_id == account_id, Message.search_vector.is_(None))
        )
        or 0
    )


def index_pending(ctx: ServiceContext) -> bool:
    """The catch-up: request the indexing job when some rows are left unindexed."""
    with ctx.sessions() as session:
        left = bool(unindexed_accounts(session, limit=1))
    if left:
        request_index(ctx)
    return left
