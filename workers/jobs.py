"""RQ jobs: ids in, one service call, safe to run twice.

Each function is named in the job catalogue (app.jobs), which says on which queue it runs,
for how long at most and how it is retried; nothing enqueues a job by another way.
"""

from __future__ import annotations

from app.services import indexing, messages, outbox, sync
from workers.runtime import context


def heartbeat() -> float:
    """Record that the scheduler and a worker are alive (exported by /metrics)."""
    return context().counters.heartbeat()


def sync_account(account_id: int, attempt: int = 0) -> str:
    """One bounded sync run of an account; enqueues its own continuation or retry."""
    return sync.run_sync_job(context(), account_id, attempt)


def sync_all_accounts() -> int:
    """Request a sync of every active account (the scheduler's periodic job)."""
    return sync.request_all(context())


def apply_message_changes(account_id: int, attempt: int = 0) -> int:
    """Write an account's pending message changes to its IMAP server."""
    return messages.run_apply_job(context(), account_id, attempt)


def send_message(outbox_id: int) -> str:
    """One delivery attempt of an outbox entry; schedules its retry or its Sent copy."""
    return outbox.send(context(), outbox_id)


def file_sent_copy(outbox_id: int) -> str:
    """APPEND a sent message to its account's Sent folder (once); retried on failure."""
    return outbox.file_copy(context(), outbox_id)


def sweep_outbox() -> int:
    """Settle sends whose worker died and queue work whose job was lost (also at worker start)."""
    return outbox.recover(context())


def resume_syncs() -> int:
    """Resume syncs a killed worker left half-done, and the indexing of what it stored
    (also at worker start)."""
    ctx = context()
    resumed = sync.control.resume_interrupted(ctx)
    indexing.index_pending(ctx)
    return resumed


def resume_changes() -> int:
    """Queue message changes whose write-back job was lost (also at worker start)."""
    return messages.resume_pending(context())


def index_messages() -> int:
    """Search vectors of newly synced messages, every account in turn, for a bounded time."""
    return indexing.index_messages(context())
