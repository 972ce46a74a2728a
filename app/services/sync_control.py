"""Who syncs an account, and when: the per-account lock, sync requests and their status.

- One sync per account at a time: a PostgreSQL advisory lock, held on its own connection for
  the whole sync. PostgreSQL releases it when the connection closes, so a worker killed with
  SIGKILL leaves no stale lock behind, and "is a sync running?" is simply "is it held?".
- One queued job per account: a request while a job is queued returns that job; a request
  while a sync runs marks the account "pending", and the running sync makes one more pass
  when it finishes, so new mail reported mid-sync is never dropped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.db import advisory_lock
from app.errors import Conflict
from app.models import Account
from app.queues import SYNC, get_queue
from app.states import AccountState, SyncState

SYNC_JOB = "workers.jobs.sync_account"
# Well above a sync job's own time budget (SyncLimits.max_seconds).
JOB_TIMEOUT_SECONDS = 900
LOCK_NAMESPACE = 0x5359  # "SY"
# A round of folders left unfinished longer than this is started afresh.
ROUND_EXPIRY = timedelta(hours=1)
LIVE_JOB_STATES = ("queued", "scheduled", "deferred")


def lock_key(account_id: int) -> int:
    """The bigint advisory-lock key of an account (namespace in the high half)."""
    return (LOCK_NAMESPACE << 32) | account_id


def account_lock(engine: Engine, account_id: int):
    """Hold the account's sync lock for the block; yields False when another sync holds it."""
    return advisory_lock(engine, lock_key(account_id))


def lock_held(session: Session, account_id: int) -> bool:
    """Whether some session holds the account's sync lock right now."""
    key = lock_key(account_id)
    return bool(
        session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = :high AND objid = :low AND objsubid = 1 AND granted)"
            ),
            {"high": key >> 32, "low": key & 0xFFFFFFFF},
        ).scalar()
    )


def pending_key(account_id: int) -> str:
    return f"emailservice:sync:pending:{account_id}"


def job_state(redis: Redis, job_id: str | None) -> str | None:
    """RQ's status of a job ("queued", "started", ...), or None when there is no such job."""
    if not job_id:
        return None
    try:
        status = Job.fetch(job_id, connection=redis).get_status(refresh=False)
    except NoSuchJobError:
        return None
    return status.value if status is not None else None


def enqueue_sync(
    session: Session, redis: Redis, account: Account, *, attempt: int = 0, delay: float = 0
) -> str:
    """Enqueue a sync job for `account` (after `delay` seconds) and remember its id."""
    job_id = f"sync-{account.id}-{uuid.uuid4().hex[:12]}"
    queue = get_queue(SYNC, redis)
    options = dict(
        job_id=job_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600, failure_ttl=7 * 86400
    )
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), SYNC_JOB, account.id, attempt, **options)
    else:
        queue.enqueue(SYNC_JOB, account.id, attempt, **options)
    account.sync_job_id = job_id
    session.flush()
    return job_id


def request_sync(session: Session, redis: Redis, account: Account) -> str:
    """The id of the job that will sync `account`: the queued one, the running one, or a new one."""
    if account.state != AccountState.ACTIVE:
        raise Conflict(
            f"Account {account.id} is {account.state}; update its credentials to sync it again."
        )
    with redis.lock(f"emailservice:sync:enqueue:{account.id}", timeout=30, blocking_timeout=30):
        if job_state(redis, account.sync_job_id) in LIVE_JOB_STATES:
            return account.sync_job_id  # type: ignore[return-value]
        if lock_held(session, account.id) and account.sync_job_id:
            redis.set(pending_key(account.id), 1, ex=3600)
            return account.sync_job_id
        job_id = enqueue_sync(session, redis, account)
        session.commit()
        return job_id


@dataclass(frozen=True)
class SyncStatus:
    state: SyncState
    last_error: str | None


def sync_status(session: Session, redis: Redis, account: Account) -> SyncStatus:
    """Derived from facts, never from a stored flag a crash could leave behind."""
    if lock_held(session, account.id):
        return SyncStatus(SyncState.RUNNING, account.last_error)
    if job_state(redis, account.sync_job_id) in LIVE_JOB_STATES:
        return SyncStatus(SyncState.QUEUED, account.last_error)
    if account.last_error:
        return SyncStatus(SyncState.FAILED, account.last_error)
    if account.sync_started_at is not None and _recent(account.sync_started_at):
        # A round was started and neither finished, nor runs, nor waits: its worker died.
        return SyncStatus(
            SyncState.FAILED, "The sync was interrupted (its worker stopped); sync again."
        )
    return SyncStatus(SyncState.IDLE, None)


def _recent(moment: datetime) -> bool:
    return datetime.now(timezone.utc) - moment < ROUND_EXPIRY
