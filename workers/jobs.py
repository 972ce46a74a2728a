"""RQ jobs: ids in, one service call, safe to run twice."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import select

from app.errors import Conflict, NotFound
from app.mail import MailConnectionError
from app.models import Account
from app.queues import (
    DEFAULT,
    HEARTBEAT_KEY,
    SEND_OUTCOME_KEY,
    SEND_OUTCOMES,
    SYNC_COUNTS_KEY,
    backoff,
    enqueue_send,
    enqueue_sent_copy,
    get_queue,
)
from app.services.sync import Syncer, SyncLimits
from app.services.sync_control import enqueue_sync, pending_key, request_sync
from app.states import AccountState
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
    return backoff(attempt)


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
        redis.hincrby(SYNC_COUNTS_KEY, "retry")
        return f"retry {attempt + 1} in {delay:.0f} s"
    if outcome.busy:
        # Another run holds the account: it makes one more pass when it sees this.
        redis.set(pending_key(account_id), 1, ex=3600)
        return "busy"
    again = not outcome.complete or bool(redis.delete(pending_key(account_id)))
    redis.hincrby(SYNC_COUNTS_KEY, "complete" if outcome.complete else "continued")
    redis.hincrby(SYNC_COUNTS_KEY, "messages", outcome.messages_fetched)
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
        if account is not None and account.state == AccountState.ACTIVE:
            enqueue_sync(session, runtime.redis(), account, attempt=attempt, delay=delay)


def sync_all_accounts() -> int:
    """Request a sync of every active account (the scheduler's periodic job)."""
    requested = 0
    with runtime.session() as session:
        ids = list(session.scalars(select(Account.id).where(Account.state == AccountState.ACTIVE)))
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


def _deliverer():
    from app.services.outbox import Deliverer, RetryPolicy

    settings = runtime.settings()
    policy = RetryPolicy(settings.send_max_attempts, settings.send_retry_seconds)
    return Deliverer(
        runtime.sessions(), runtime.secretbox(), settings.mail_tls_ca_file or None, policy
    )


def send_message(outbox_id: int) -> str:
    """One delivery attempt of an outbox entry; schedules its retry or its Sent copy."""
    outcome = _deliverer().deliver(outbox_id)
    counted = "deferred" if outcome.retry_in is not None else outcome.state
    if counted in SEND_OUTCOMES and outcome.attempted:
        runtime.redis().hincrby(SEND_OUTCOME_KEY, counted)
    if outcome.retry_in is not None:
        enqueue_send(runtime.redis(), outbox_id, delay=outcome.retry_in)
    if outcome.copy:
        enqueue_sent_copy(runtime.redis(), outbox_id)
    return outcome.state


def file_sent_copy(outbox_id: int) -> str:
    """APPEND a sent message to its account's Sent folder (once); retried on failure."""
    outcome = _deliverer().file_sent_copy(outbox_id)
    if outcome.retry_in is not None:
        enqueue_sent_copy(runtime.redis(), outbox_id, delay=outcome.retry_in)
    return outcome.state


def sweep_outbox() -> int:
    """Settle sends whose worker died and queue work whose job was lost (also at worker start)."""
    send, copy = _deliverer().sweep()
    for outbox_id in send:
        enqueue_send(runtime.redis(), outbox_id)
    for outbox_id in copy:
        enqueue_sent_copy(runtime.redis(), outbox_id)
    return len(send) + len(copy)
