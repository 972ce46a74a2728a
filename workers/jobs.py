"""RQ jobs: ids in, one service call, safe to run twice."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

from sqlalchemy import select

from app.errors import Conflict, NotFound
from app.mail import MailConnectionError
from app.models import Account
from app.queues import DEFAULT, HEARTBEAT_KEY, get_queue
from app.services.sync import Syncer, SyncLimits
from app.services.sync_control import enqueue_sync, pending_key, request_sync
from workers import runtime

log = logging.getLogger(__name__)
# Network failures are retried this many times, with exponential backoff and jitter.
SYNC_RETRIES = 5


def heartbeat() -> float:
    """Record that the scheduler and a worker are alive (exported by /metrics)."""
    now = time.time()
    runtime.redis().set(HEARTBEAT_KEY, repr(now))
    return now


def retry_delay(attempt: int) -> float:
    """30 s, 60 s, 120 s ... capped at an hour, each spread by +-50% so retries don't align."""
    return min(30 * 2**attempt, 3600) * random.uniform(0.5, 1.5)


def sync_account(account_id: int, attempt: int = 0) -> str:
    """One bounded sync run of an account; enqueues its own continuation or retry."""
    settings = runtime.settings()
    limits = SyncLimits(
        batch_messages=settings.sync_batch_messages, max_messages=settings.sync_job_max_messages
    )
    syncer = Syncer(
        runtime.sessions(), runtime.secretbox(), settings.mail_tls_ca_file or None, limits
    )
    redis = runtime.redis()
    try:
        outcome = syncer.sync_account(account_id)
    except NotFound:
        return "account gone"
    except MailConnectionError as exc:
        if attempt >= SYNC_RETRIES:
            raise
        delay = retry_delay(attempt)
        log.warning(
            "sync failed, retrying",
            extra={
                "account_id": account_id,
                "attempt": attempt + 1,
                "delay": delay,
                "error": str(exc),
            },
        )
        _enqueue(account_id, attempt=attempt + 1, delay=delay)
        return f"retry {attempt + 1} in {delay:.0f} s"
    if outcome.busy:
        # Another run holds the account: it makes one more pass when it sees this.
        redis.set(pending_key(account_id), 1, ex=3600)
        return "busy"
    again = not outcome.complete or bool(redis.delete(pending_key(account_id)))
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
        _enqueue(account_id)
        return f"continued after {outcome.messages_fetched} messages"
    return f"done, {outcome.messages_fetched} messages fetched"


def _enqueue(account_id: int, attempt: int = 0, delay: float = 0) -> None:
    with runtime.session() as session:
        account = session.get(Account, account_id)
        if account is not None and account.state == "active":
            enqueue_sync(session, runtime.redis(), account, attempt=attempt, delay=delay)


def sync_all_accounts() -> int:
    """Request a sync of every active account (the scheduler's periodic job)."""
    requested = 0
    with runtime.session() as session:
        ids = list(session.scalars(select(Account.id).where(Account.state == "active")))
    for account_id in ids:
        with runtime.session() as session:
            account = session.get(Account, account_id)
            if account is None:
                continue
            try:
                request_sync(session, runtime.redis(), account)
                requested += 1
            except Conflict:
                continue  # its state changed meanwhile
    return requested


def apply_message_changes(account_id: int, attempt: int = 0) -> int:
    """Write an account's pending message changes to its IMAP server."""
    from app.services.messages import apply_changes

    settings = runtime.settings()
    try:
        applied = apply_changes(
            runtime.sessions(), runtime.secretbox(), settings.mail_tls_ca_file or None, account_id
        )
    except MailConnectionError:
        if attempt >= SYNC_RETRIES:
            raise
        delay = retry_delay(attempt)
        get_queue(DEFAULT, runtime.redis()).enqueue_in(
            timedelta(seconds=delay),
            "workers.jobs.apply_message_changes",
            account_id,
            attempt + 1,
        )
        return 0
    return applied
