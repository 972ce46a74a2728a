"""Redis connections and the RQ queues the service uses.

The web app enqueues jobs by their dotted name (`workers.jobs.heartbeat`) and never imports
`workers/`, so dependencies point one way.
"""

from __future__ import annotations

import random
from datetime import timedelta

from redis import Redis
from rq import Queue, Retry

# Consumed in this order by a worker started without arguments: sending is what a user
# waits for, syncs are long and can wait behind it.
SEND = "send"
DEFAULT = "default"
SYNC = "sync"
QUEUES: tuple[str, ...] = (SEND, DEFAULT, SYNC)

# Set by the scheduler's periodic heartbeat job; /metrics exports it so a stalled scheduler
# or worker pool shows up as a stale timestamp.
HEARTBEAT_KEY = "emailservice:heartbeat"
# Delivery attempts by outcome (sent, failed, uncertain, deferred), counted by the send jobs
# in Redis (work-horses are forked per job: their memory is gone after it) for /metrics.
SEND_OUTCOME_KEY = "emailservice:send:outcomes"
SEND_OUTCOMES = ("sent", "failed", "uncertain", "deferred")
# Sync runs by outcome (complete, continued: hit its bounds, retry: a connection failed) and
# the messages they fetched, counted by the sync jobs.
SYNC_COUNTS_KEY = "emailservice:sync:counts"
SYNC_OUTCOMES = ("complete", "continued", "retry")


def make_redis(redis_url: str) -> Redis:
    """A client whose calls fail within seconds when Redis is down, and reconnect after."""
    return Redis.from_url(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
    )


def backoff(attempt: int, base: float = 30, cap: float = 3600) -> float:
    """Seconds before retry `attempt` (0 first): base, 2 base, 4 base ... at most cap, each
    spread by +-50% so retries of many jobs do not arrive together."""
    return min(base * 2**attempt, cap) * random.uniform(0.5, 1.5)


def get_queue(name: str, connection: Redis) -> Queue:
    """One of the service's queues; an unknown name is a programming error."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; the service uses {', '.join(QUEUES)}")
    return Queue(name, connection=connection)


def queue_depths(connection: Redis) -> dict[str, int]:
    """Jobs waiting in each queue."""
    return {name: Queue(name, connection=connection).count for name in QUEUES}


SEND_JOB = "workers.jobs.send_message"
SENT_COPY_JOB = "workers.jobs.file_sent_copy"
# Above one SMTP session's worst case: connecting and each command (30 s), the payload, and
# the server's reply to the final "." (app.mail.smtp.FINAL_REPLY_TIMEOUT, 300 s).
SEND_JOB_TIMEOUT = 900


def enqueue_send(connection: Redis, outbox_id: int, delay: float = 0) -> None:
    """Queue a delivery attempt of an outbox entry (now, or after `delay` seconds)."""
    _enqueue(connection, SEND_JOB, outbox_id, delay)


def enqueue_sent_copy(connection: Redis, outbox_id: int, delay: float = 0) -> None:
    """Queue the APPEND of a sent message to its account's Sent folder."""
    _enqueue(connection, SENT_COPY_JOB, outbox_id, delay)


def _enqueue(connection: Redis, job: str, outbox_id: int, delay: float) -> None:
    queue = get_queue(SEND, connection)
    # Retry: RQ runs the job again when its work-horse died; the job reads the entry's state
    # first, so a second run never sends twice.
    options = {"job_timeout": SEND_JOB_TIMEOUT, "retry": Retry(max=3, interval=[10, 30, 60])}
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), job, outbox_id, **options)
    else:
        queue.enqueue(job, outbox_id, **options)
