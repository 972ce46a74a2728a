"""The RQ worker process: every queue of the service, JSON logs with the job id, and fair
scheduling of the tenants' jobs.

Fairness: a tenant's job (a catalogue entry with an `owner`: sync, message changes, send, Sent
copy) runs only in one of its tenant's slots (app.jobs.TenantSlots), at most
min(TENANT_MAX_CONCURRENT_JOBS, workers - 1) at once over every worker, so one tenant never
occupies every worker. The worker takes the slot after it dequeued the job and before it
forks the work-horse; when the tenant's slots are all taken, the job is not run but scheduled
again a few seconds later (RQ's scheduler puts it back at the end of its queue), and the
worker goes on to the next job: another tenant's job behind a long backlog starts as soon as
a worker is free, and a capped tenant's backlog costs a dequeue every few seconds per job, not
a spinning worker. Nothing of a job's own semantics changes: it only runs later.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any

from rq import Queue, Worker
from rq.executions import Execution
from rq.job import Job

from app.context import DEPENDENCY_ERRORS
from app.jobs import CATALOGUE, QUEUES, JobSpec, QueueName, TenantSlots
from app.logs import request_id_var
from app.services import outbox, usage
from workers import runtime

log = logging.getLogger(__name__)

# A job refused a slot runs again after this many seconds (random, so refused jobs spread).
RETRY_SLOT_SECONDS = (1.0, 3.0)
# ... and a job whose tenant could not be looked up (the database is down), after these.
DEPENDENCY_RETRY_SECONDS = (10.0, 20.0)
# How long a count of the workers is used before counting again.
WORKERS_COUNTED_SECONDS = 5.0
_BY_FUNC: dict[str, JobSpec] = {spec.func: spec for spec in CATALOGUE}


@cache
def _this_machine() -> str:
    """This machine, for telling whether a slot's holder is a process here: the host name and
    the kernel's boot id (so two containers with one host name are told apart)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServiceWorker(Worker):
    """An RQ worker whose forked work-horses drop inherited connections first, and which runs
    a tenant's job only in one of the tenant's slots."""

    _slot: tuple[int, str] | None = None  # (tenant, holder) of the job running now
    _tenant_slots: TenantSlots | None = None
    _workers_counted: tuple[float, int] = (0.0, 0)  # (when, how many), see live_workers

    def main_work_horse(self, job: Any, queue: Any) -> None:
        runtime.after_fork()
        request_id_var.set(job.id)
        super().main_work_horse(job, queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            tenant_id = self._tenant_of(job)
        except DEPENDENCY_ERRORS:
            # PostgreSQL is down: the job cannot run now either. Kept for later, not lost
            # (an exception here would stop the worker with the dequeued job in its hands).
            log.warning("cannot tell the tenant of job %s now; it waits", job.id)
            self._put_back(job, queue, None, DEPENDENCY_RETRY_SECONDS)
            return
        if tenant_id is None:
            super().execute_job(job, queue)
            return
        holder = f"{_this_machine()}|{os.getpid()}|{uuid.uuid4().hex}"
        if not self._take_slot(tenant_id, holder):
            self._put_back(job, queue, tenant_id)
            return
        self._slot = (tenant_id, holder)
        try:
            super().execute_job(job, queue)
        finally:
            self._slot = None
            self._slots().release(tenant_id, holder)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """RQ's heartbeat while a job runs (every job_monitoring_interval): the slot's too."""
        super().maintain_heartbeats(job, execution)
        if self._slot is not None:
            tenant_id, holder = self._slot
            if not self._slots().renew(tenant_id, holder):
                log.warning("the slot of job %s had lapsed (tenant %s)", job.id, tenant_id)

    def _slots(self) -> TenantSlots:
        if self._tenant_slots is None:
            self._tenant_slots = TenantSlots(self.connection)
        return self._tenant_slots

    def cap(self) -> int:
        """Slots per tenant: TENANT_MAX_CONCURRENT_JOBS, and always one worker fewer than
        there are (at least one: a single worker runs everything, one job at a time)."""
        setting = runtime.context().settings.tenant_max_concurrent_jobs
        return max(1, min(setting, self.live_workers() - 1))

    def live_workers(self) -> int:
        """Registered workers, less those of this host whose process is gone: a killed
        worker stays registered until its registration expires (minutes), and counting it
        would let one tenant take every worker that is left."""
        when, count = self._workers_counted
        if time.monotonic() - when < WORKERS_COUNTED_SECONDS:
            return count  # a long backlog is refused job after job: count once in a while
        host, count = socket.gethostname(), 0
        for worker in Worker.all(connection=self.connection):
            if worker.hostname == host and worker.pid and not _alive(worker.pid):
                continue
            count += 1
        self._workers_counted = (time.monotonic(), count)
        return count

    def _tenant_of(self, job: Job) -> int | None:
        """The tenant a job works for, or None for the service's own jobs. Looked up once
        (by the id of its account or outbox entry) and kept in the job's meta."""
        spec = _BY_FUNC.get(job.func_name or "")
        if spec is None or spec.owner is None or not job.args:
            return None
        known = job.meta.get("tenant_id")
        if isinstance(known, int):
            return known
        try:
            object_id = int(job.args[0])
        except (TypeError, ValueError):
            return None  # not an id: the job fails by itself, it needs no slot for that
        tenant_id = usage.job_tenant(runtime.context(), spec.owner, object_id)
        if tenant_id is not None:
            job.meta["tenant_id"] = tenant_id
            job.save_meta()  # type: ignore[no-untyped-call]
        return tenant_id

    def _take_slot(self, tenant_id: int, holder: str) -> bool:
        slots, cap = self._slots(), self.cap()
        if slots.acquire(tenant_id, holder, cap):
            return True
        # A worker of this machine that died (killed, out of memory) left its slots behind;
        # their leases would free them later, its process being gone frees them now.
        machine, stale = _this_machine(), False
        for other in slots.holders(tenant_id):
            where, _, rest = other.partition("|")
            pid = rest.partition("|")[0]
            if where == machine and pid.isdigit() and not _alive(int(pid)):
                slots.release(tenant_id, other)
                stale = True
        return stale and slots.acquire(tenant_id, holder, cap)

    def _put_back(
        self,
        job: Job,
        queue: Queue,
        tenant_id: int | None,
        within: tuple[float, float] = RETRY_SLOT_SECONDS,
    ) -> None:
        """Run the job later, at the end of its queue: its tenant's slots are all in use."""
        delay = random.uniform(*within)
        queue.schedule_job(job, datetime.now(timezone.utc) + timedelta(seconds=delay))
        if len(self.queues) == 1:
            # A worker of one queue dequeues through RQ's intermediate list, which the
            # work-horse would have cleared; a job left there would be failed as stuck.
            queue.intermediate_queue.remove(job.id)
        log.debug("job %s of tenant %s waits for a slot (%.1f s)", job.id, tenant_id, delay)


def run_worker(queue_names: tuple[str, ...] = (), burst: bool = False) -> bool:
    """Consume the named queues (all of the service's when none), in priority order."""
    ctx = runtime.context()
    names = [QueueName(name) for name in queue_names] or list(QUEUES)
    worker = ServiceWorker([ctx.jobs.queue(name) for name in names], connection=ctx.redis)
    # Loaded once here and inherited by every forked work-horse, instead of once per job (the
    # B5 profile: a third of a send job's time was loading the CA store).
    try:
        ctx.connector.load_trust_store()
    except (OSError, ValueError):
        log.exception("loading the TLS trust store failed; each job will try again")
    # Sends a crashed worker left half-done are settled before new work starts (and every
    # minute by the scheduler, which also covers a database that is down right now).
    try:
        outbox.recover(ctx)
    except Exception:
        log.exception("outbox sweep at start failed")
    # with_scheduler: RQ's own scheduler moves jobs whose retry interval has passed back
    # into their queue; without it a Retry(interval=...) job would never run again.
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level=ctx.settings.log_level))
