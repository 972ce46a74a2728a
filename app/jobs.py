"""The job catalogue: every background job with its queue, timeout and retry policy, once.

Every enqueue goes through `Jobs.enqueue(<entry>, ...)`, so a job's queue, timeout, retries
and result lifetimes are written here and nowhere else. The functions themselves live in
workers/jobs.py; the catalogue names them by their dotted path, so the web app never imports
workers/ (dependencies point one way) and a test checks that every path resolves.

Queues are consumed in priority order by a worker started without arguments: sending is what
a user waits for; syncs are long and can wait behind it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from app.config import Settings


class QueueName(StrEnum):
    SEND = "send"
    DEFAULT = "default"
    SYNC = "sync"


class Owner(StrEnum):
    """What the first argument of a tenant's job names, so a worker can tell whose it is."""

    ACCOUNT = "account"
    OUTBOX = "outbox"


QUEUES: tuple[QueueName, ...] = (QueueName.SEND, QueueName.DEFAULT, QueueName.SYNC)
# RQ's states of a job that has not started yet.
WAITING_STATES = ("queued", "scheduled", "deferred")


@dataclass(frozen=True)
class JobSpec:
    """One kind of job."""

    func: str  # dotted path of the function in workers/jobs.py
    queue: QueueName
    timeout: int  # seconds; RQ kills the work-horse after it
    # RQ runs the job again after these delays when its work-horse died (the job must be safe
    # to run twice: each one reads its state from the database first).
    retry_intervals: tuple[int, ...] = ()
    result_ttl: int | None = None  # seconds a finished job's record is kept (RQ's default: 500)
    failure_ttl: int | None = None  # seconds a failed job's record is kept
    # A tenant's work (its first argument names this): it runs only in one of the tenant's
    # TENANT_MAX_CONCURRENT_JOBS slots (TenantSlots). None: the service's own work.
    owner: Owner | None = None


# One bounded sync run of an account (SyncLimits.max_seconds is well below its timeout).
SYNC_ACCOUNT = JobSpec(
    "workers.jobs.sync_account",
    QueueName.SYNC,
    timeout=900,
    result_ttl=3600,
    failure_ttl=7 * 86400,
    owner=Owner.ACCOUNT,
)
# Flags, moves and deletions a user asked for, written back over IMAP.
APPLY_MESSAGE_CHANGES = JobSpec(
    "workers.jobs.apply_message_changes", QueueName.DEFAULT, 600, owner=Owner.ACCOUNT
)
# Above one SMTP session's worst case: connecting and each command (30 s), the payload, and
# the server's reply to the final "." (app.mail.smtp.FINAL_REPLY_TIMEOUT, 300 s).
SEND_MESSAGE = JobSpec(
    "workers.jobs.send_message", QueueName.SEND, 900, (10, 30, 60), owner=Owner.OUTBOX
)
FILE_SENT_COPY = JobSpec(
    "workers.jobs.file_sent_copy", QueueName.SEND, 900, (10, 30, 60), owner=Owner.OUTBOX
)
# Search vectors of newly synced mail (app.services.indexing): the service's own job, which
# gives every account with work left one short batch in turn and hands over to its
# continuation after 30 s. On `default`, ahead of the long syncs: a sync run's mail becomes
# searchable while the account's next run fetches more.
INDEX_MESSAGES = JobSpec("workers.jobs.index_messages", QueueName.DEFAULT, 300)
HEARTBEAT = JobSpec("workers.jobs.heartbeat", QueueName.DEFAULT, 60)
SYNC_ALL_ACCOUNTS = JobSpec("workers.jobs.sync_all_accounts", QueueName.DEFAULT, 600)
SWEEP_OUTBOX = JobSpec("workers.jobs.sweep_outbox", QueueName.SEND, 600)
RESUME_SYNCS = JobSpec("workers.jobs.resume_syncs", QueueName.DEFAULT, 600)
RESUME_CHANGES = JobSpec("workers.jobs.resume_changes", QueueName.DEFAULT, 600)

CATALOGUE: tuple[JobSpec, ...] = (
    SYNC_ACCOUNT,
    APPLY_MESSAGE_CHANGES,
    SEND_MESSAGE,
    FILE_SENT_COPY,
    HEARTBEAT,
    SYNC_ALL_ACCOUNTS,
    SWEEP_OUTBOX,
    RESUME_SYNCS,
    RESUME_CHANGES,
    INDEX_MESSAGES,
)


@dataclass(frozen=True)
class PeriodicJob:
    """A job the scheduler enqueues every `interval_seconds`, under a fixed id."""

    id: str
    job: JobSpec
    interval_seconds: int


def periodic_jobs(settings: Settings) -> list[PeriodicJob]:
    """Every job the scheduler runs, with its interval."""
    return [
        # /metrics exports when it last ran: a stalled scheduler or worker pool shows.
        PeriodicJob("periodic-heartbeat", HEARTBEAT, 60),
        PeriodicJob("periodic-sync", SYNC_ALL_ACCOUNTS, settings.sync_interval_seconds),
        # Settles sends whose worker died and re-queues work whose job was lost.
        PeriodicJob("periodic-outbox-sweep", SWEEP_OUTBOX, 60),
        # Resumes syncs whose worker was killed mid-round, and the indexing of what such a
        # worker (or a lost job) left unsearchable (also at worker start).
        PeriodicJob("periodic-sync-resume", RESUME_SYNCS, 60),
        # Queues message changes (flags, moves, deletions) whose write-back job was lost.
        PeriodicJob("periodic-changes-resume", RESUME_CHANGES, 60),
    ]


def backoff(attempt: int, base: float = 30, cap: float = 3600) -> float:
    """Seconds before retry `attempt` (0 first): base, 2 base, 4 base ... at most cap, each
    spread by +-50% so retries of many jobs do not arrive together."""
    return float(min(base * 2**attempt, cap)) * random.uniform(0.5, 1.5)


# KEYS: the queue's list, its scheduled jobs, the job's hash; ARGV[1]: the job's id. Takes
# the job out of whichever holds it and deletes it, in one step: how many held it (0: a
# worker has dequeued it already, or it is gone).
_CLAIM = """
local n = redis.call('LREM', KEYS[1], 0, ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
if n > 0 then redis.call('DEL', KEYS[3]) end
return n
"""


class Jobs:
    """Enqueues catalogue jobs on one Redis connection, and reads their state."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self._claim = connection.register_script(_CLAIM)

    def claim(self, spec: JobSpec, job_id: str) -> bool:
        """Take a waiting job (queued, or scheduled for later) away from the workers, for
        the caller to do its work itself: True when it was waiting and no worker will run
        it now; False when a worker took it already or there is no such job."""
        queue = self.queue(spec.queue)
        keys = [queue.key, queue.scheduled_job_registry.key, Job.key_for(job_id)]
        return bool(self._claim(keys=keys, args=[job_id]))

    def queue(self, name: QueueName) -> Queue:
        return Queue(name.value, connection=self.connection)

    def enqueue(
        self,
        spec: JobSpec,
        *args: Any,
        delay: float = 0,
        job_id: str | None = None,
        tenant_id: int | None = None,
    ) -> str:
        """Queue `spec` with `args` (now, or after `delay` seconds); the job's id. A caller
        that knows the tenant the job works for passes it: the worker then takes the tenant's
        slot without looking the tenant up (workers/worker.py)."""
        options: dict[str, Any] = {"job_timeout": spec.timeout}
        if tenant_id is not None:
            options["meta"] = {"tenant_id": tenant_id}
        if spec.retry_intervals:
            options["retry"] = Retry(
                max=len(spec.retry_intervals), interval=list(spec.retry_intervals)
            )
        if spec.result_ttl is not None:
            options["result_ttl"] = spec.result_ttl
        if spec.failure_ttl is not None:
            options["failure_ttl"] = spec.failure_ttl
        if job_id is not None:
            options["job_id"] = job_id
        queue = self.queue(spec.queue)
        if delay > 0:
            job = queue.enqueue_in(timedelta(seconds=delay), spec.func, *args, **options)
        else:
            job = queue.enqueue(spec.func, *args, **options)
        return str(job.id)

    def state(self, job_id: str | None) -> str | None:
        """RQ's status of a job ("queued", "started", ...), or None when there is no such job."""
        if not job_id:
            return None
        try:
            status = Job.fetch(job_id, connection=self.connection).get_status(refresh=False)
        except NoSuchJobError:
            return None
        return str(status.value) if status is not None else None

    def waiting(self, job_id: str | None) -> bool:
        """Whether the job exists and has not started yet."""
        return self.state(job_id) in WAITING_STATES

    def depths(self) -> dict[str, int]:
        """Jobs waiting in each queue."""
        return {name.value: self.queue(name).count for name in QUEUES}


# Slots of the tenants' running jobs: one sorted set per tenant, members the holders, scores
# when each lease ends (Redis's own clock, so the workers' clocks need not agree).
SLOTS_KEY = "emailservice:tenant-jobs:{tenant_id}"
# A holder renews its lease while its job runs (RQ's monitoring interval is 30 s); a worker
# that died without releasing frees its slots when they end.
LEASE_SECONDS = 90

_NOW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
"""
# KEYS[1]: the tenant's slots; ARGV: holder, cap, lease seconds. 1: taken, 0: all in use.
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
)
# KEYS[1]: the tenant's slots; ARGV: holder, lease seconds. 1: renewed, 0: it had lapsed.
_RENEW = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""
)


class TenantSlots:
    """How many of a tenant's jobs run at once, across every worker: a slot per running job.

    A worker takes a slot for a tenant's job before running it and gives it back after
    (workers/worker.py); a job that finds its tenant's slots all taken is not run but put
    back for later. Each slot is a lease: its holder renews it while the job runs, so the slot
    of a worker that died (killed, its host gone) frees itself within LEASE_SECONDS.
    """

    def __init__(self, connection: Redis, lease_seconds: float = LEASE_SECONDS) -> None:
        self.connection = connection
        self.lease_seconds = lease_seconds
        self._acquire = connection.register_script(_ACQUIRE)
        self._renew = connection.register_script(_RENEW)

    @staticmethod
    def key(tenant_id: int) -> str:
        return SLOTS_KEY.format(tenant_id=tenant_id)

    def acquire(self, tenant_id: int, holder: str, cap: int) -> bool:
        """Take a slot for `holder` unless `cap` slots of the tenant are held already."""
        taken = self._acquire(keys=[self.key(tenant_id)], args=[holder, cap, self.lease_seconds])
        return bool(taken)

    def renew(self, tenant_id: int, holder: str) -> bool:
        """Extend the holder's lease; False when it had lapsed (and someone may use it)."""
        return bool(self._renew(keys=[self.key(tenant_id)], args=[holder, self.lease_seconds]))

    def release(self, tenant_id: int, holder: str) -> None:
        self.connection.zrem(self.key(tenant_id), holder)

    def holders(self, tenant_id: int) -> list[str]:
        """Who holds the tenant's slots (lapsed leases included until the next acquire)."""
        found: list[bytes | str] = self.connection.zrange(  # type: ignore[assignment]
            self.key(tenant_id), 0, -1
        )
        return [h.decode() if isinstance(h, bytes) else h for h in found]
