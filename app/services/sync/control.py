"""Who syncs an account, and when: sync requests, their status, and the sync job's run.

- One sync per account at a time: a PostgreSQL advisory lock (account.lock_key), held on its
  own connection for the whole run. PostgreSQL releases it when the connection closes, so a
  worker killed with SIGKILL leaves no stale lock behind, and "is a sync running?" is simply
  "is it held?".
- One queued job per account: a request while a job is queued returns that job; a request
  while a sync runs marks the account "pending", and the running sync makes one more pass
  when it finishes, so new mail reported mid-sync is never dropped.
- A job does a bounded amount of work and enqueues its continuation; a connection failure is
  retried with exponential backoff and jitter, up to SYNC_RETRIES times.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, text

from app.context import ServiceContext, Unit
from app.errors import Conflict, NotFound
from app.jobs import SYNC_ACCOUNT, backoff
from app.mail import MailConnectionError
from app.models import Account, Folder
from app.services import indexing
from app.services.accounts import get_account
from app.services.sync.account import ROUND_EXPIRY, Syncer, lock_key
from app.services.sync.folder import SyncLimits
from app.states import AccountState, SyncState

log = logging.getLogger(__name__)
# Network failures are retried this many times, with exponential backoff and jitter.
SYNC_RETRIES = 5


def pending_key(account_id: int) -> str:
    return f"emailservice:sync:pending:{account_id}"


def lock_held(unit: Unit, account_id: int) -> bool:
    """Whether some session holds the account's sync lock right now."""
    key = lock_key(account_id)
    return bool(
        unit.session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = :high AND objid = :low AND objsubid = 1 AND granted)"
            ),
            {"high": key >> 32, "low": key & 0xFFFFFFFF},
        ).scalar()
    )


def enqueue_sync(unit: Unit, account: Account, *, attempt: int = 0, delay: float = 0) -> str:
    """Enqueue a sync job for `account` (after `delay` seconds), remember its id, commit."""
    job_id = f"sync-{account.id}-{uuid.uuid4().hex[:12]}"
    unit.ctx.jobs.enqueue(SYNC_ACCOUNT, account.id, attempt, delay=delay, job_id=job_id)
    account.sync_job_id = job_id
    unit.commit()
    return job_id


def request_sync(unit: Unit, account_id: int) -> str:
    """The id of the job that will sync the account: the queued one, the running one, or a
    new one (Conflict unless the account is active)."""
    account = get_account(unit, account_id)
    if account.state != AccountState.ACTIVE:
        raise Conflict(
            f"Account {account.id} is {account.state}; update its credentials to sync it again."
        )
    redis, jobs = unit.ctx.redis, unit.ctx.jobs
    with redis.lock(f"emailservice:sync:enqueue:{account.id}", timeout=30, blocking_timeout=30):
        if account.sync_job_id and jobs.waiting(account.sync_job_id):
            return account.sync_job_id
        if account.sync_job_id and lock_held(unit, account.id):
            redis.set(pending_key(account.id), 1, ex=3600)
            return account.sync_job_id
        return enqueue_sync(unit, account)


def request_all(ctx: ServiceContext) -> int:
    """Request a sync of every active account (the scheduler's periodic job); how many."""
    with ctx.work() as unit:
        ids = list(
            unit.session.scalars(select(Account.id).where(Account.state == AccountState.ACTIVE))
        )
    requested = 0
    for account_id in ids:
        with ctx.work() as unit:
            try:
                request_sync(unit, account_id)
                requested += 1
            except (NotFound, Conflict):
                continue  # deleted, or its state changed meanwhile
    return requested


def resume_interrupted(ctx: ServiceContext) -> int:
    """Request a sync of every account whose round a killed worker left open (started
    recently, not finished, no failure recorded, nobody holding its lock, no job waiting:
    what sync_status reports as interrupted): the next worker carries it on without anyone
    asking. Run when a worker starts and every minute by the scheduler. How many."""
    since = datetime.now(timezone.utc) - ROUND_EXPIRY
    with ctx.work() as unit:
        ids = list(
            unit.session.scalars(
                select(Account.id).where(
                    Account.state == AccountState.ACTIVE,
                    Account.sync_started_at.is_not(None),
                    Account.sync_started_at > since,
                    # A round that recorded a failure was given up by its own retries (or
                    # waits for them): only the silent stop of a killed worker is resumed.
                    Account.last_error.is_(None),
                )
            )
        )
    resumed = 0
    for account_id in ids:
        with ctx.work() as unit:
            account = unit.session.get(Account, account_id)
            if account is None or lock_held(unit, account_id):
                continue  # gone, or a sync runs right now
            if ctx.jobs.waiting(account.sync_job_id):
                continue
            try:
                request_sync(unit, account_id)
            except (NotFound, Conflict):
                continue
            resumed += 1
            log.info("interrupted sync resumed", extra={"account_id": account_id})
    return resumed


@dataclass(frozen=True)
class FolderProgress:
    name: str
    messages: int
    last_synced_at: datetime | None


@dataclass(frozen=True)
class SyncStatus:
    account: Account
    state: SyncState
    last_error: str | None
    folders: list[FolderProgress]
    # Messages stored (listed, readable) whose search vector the indexing job has not
    # computed yet: word search does not find them until it has.
    unindexed: int = 0


def sync_status(unit: Unit, account_id: int) -> SyncStatus:
    """Derived from facts, never from a stored flag a crash could leave behind."""
    account = get_account(unit, account_id)
    folders = [
        FolderProgress(f.name, f.messages_count, f.last_synced_at)
        for f in unit.session.scalars(
            select(Folder).where(Folder.account_id == account.id).order_by(Folder.name)
        )
    ]
    state, error = SyncState.IDLE, None
    if lock_held(unit, account.id):
        state, error = SyncState.RUNNING, account.last_error
    elif unit.ctx.jobs.waiting(account.sync_job_id):
        state, error = SyncState.QUEUED, account.last_error
    elif account.last_error and account.sync_started_at is None:
        # Written by a round that finished (folders over MAX_FOLDERS_PER_ACCOUNT skipped, or
        # mail stored headers-only over quota): a note, not a failure. A failure is recorded
        # inside a round, which is still open then.
        state, error = SyncState.IDLE, account.last_error
    elif account.last_error:
        state, error = SyncState.FAILED, account.last_error
    elif account.sync_started_at is not None and _recent(account.sync_started_at):
        # A round was started and neither finished, nor runs, nor waits: its worker died.
        state = SyncState.FAILED
        error = "The sync was interrupted (its worker stopped); sync again."
    return SyncStatus(account, state, error, folders, indexing.pending(unit.session, account.id))


def _recent(moment: datetime) -> bool:
    return datetime.now(timezone.utc) - moment < ROUND_EXPIRY


def run_sync_job(ctx: ServiceContext, account_id: int, attempt: int = 0) -> str:
    """The sync job: one bounded run; enqueues its continuation, its next pass or its retry."""
    settings = ctx.settings
    limits = SyncLimits(
        batch_messages=settings.sync_batch_messages, max_messages=settings.sync_job_max_messages
    )
    try:
        outcome = Syncer(ctx, limits).sync_account(account_id)
    except NotFound:
        return "account gone"
    except MailConnectionError as exc:
        if attempt >= SYNC_RETRIES:
            raise
        delay = backoff(attempt)
        log.warning(
            "sync failed, retrying",
            extra={
                "account_id": account_id,
                "attempt": attempt + 1,
                "delay": delay,
                "error": str(exc),
            },
        )
        _enqueue_again(ctx, account_id, attempt=attempt + 1, delay=delay)
        ctx.counters.count_sync("retry")
        return f"retry {attempt + 1} in {delay:.0f} s"
    if outcome.busy:
        # Another run holds the account: it makes one more pass when it sees this.
        ctx.redis.set(pending_key(account_id), 1, ex=3600)
        return "busy"
    again = not outcome.complete or bool(ctx.redis.delete(pending_key(account_id)))
    ctx.counters.count_sync(
        "complete" if outcome.complete else "continued", outcome.messages_fetched
    )
    log.info(
        "sync run finished",
        extra={
            "account_id": account_id,
            "fetched": outcome.messages_fetched,
            "complete": outcome.complete,
            "continued": again,
        },
    )
    if again:
        _enqueue_again(ctx, account_id)
        return f"continued after {outcome.messages_fetched} messages"
    return f"done, {outcome.messages_fetched} messages fetched"


def _enqueue_again(
    ctx: ServiceContext, account_id: int, attempt: int = 0, delay: float = 0
) -> None:
    with ctx.work() as unit:
        account = unit.session.get(Account, account_id)
        if account is not None and account.state == AccountState.ACTIVE:
            enqueue_sync(unit, account, attempt=attempt, delay=delay)
