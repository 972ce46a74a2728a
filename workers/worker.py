"""The RQ worker process: every queue of the service, JSON logs with the job id, and fair
scheduling of the tenants' jobs.

Send jobs (the `send` queue) run in the worker's own process, one after the other; every
other job runs in a work-horse forked for it. A send job is short, and a fork per message
cost more than the send itself (BENCHMARKS.md, B5); in-process, the worker also keeps its
SMTP connections from one message to the next (app.services.outbox). Their timeout is RQ's
death penalty in either case, and a worker killed mid-send leaves the same traces as a killed
work-horse: its entry `sending`, which the outbox sweep settles.

Fairness: a tenant's job (a catalogue entry with an `owner`: sync, message changes, send, Sent
copy) runs only in one of its tenant's slots (app.jobs.TenantSlots), at most
min(TENANT_MAX_CONCURRENT_JOBS, workers - 1) at once over every worker, so one tenant never
occupies every worker. The worker takes the slot after it dequeued the job and before it runs
it; when the tenant's slots are all taken, the job is not run but scheduled again a few
seconds later (RQ's scheduler puts it back at the end of its queue), or as soon as a slot of
its tenant is given back (the worker giving it back puts the tenant's oldest refused job at
the front of its queue), and the worker goes on to the next job: another tenant's job behind
a long backlog starts as soon as a worker is free, and a capped tenant's backlog costs a
dequeue every few seconds per job, or per slot given back, not a spinning worker. Nothing of a
job's own semantics changes: it only runs later.

Outages: RQ's own worker quits on most Redis errors (a heartbeat while a job runs, a status
write after it). This one waits instead and carries on where it was: its work loop waits for
Redis and resumes (logging the outage once, not every retry); while a job runs it keeps
watching the work-horse and only skips the heartbeats; the horse retries recording its
job's result until Redis answers; a job whose fate was lost in the outage is put back in its
queue (every job is safe to run twice); and RQ's scheduler inside the worker (which moves
delayed and retried jobs into their queues) keeps running through the outage instead of
dying and waiting for RQ's maintenance round, ten minutes later. A PostgreSQL outage is the
jobs' business: they fail and are retried per their catalogue entry, or wait (see
execute_job).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, cast

from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.worker import DequeueStrategy, WorkerStatus

from app.context import DEPENDENCY_ERRORS, REDIS_ERRORS, freeze_startup_objects
from app.jobs import CATALOGUE, QUEUES, JobSpec, QueueName, TenantSlots
from app.logs import request_id_var
from app.services import indexing, messages, outbox, usage
from app.services.sync import control as sync_control
from workers import runtime
from workers.runtime import Outage, until_redis_answers

log = logging.getLogger(__name__)

# A job refused a slot runs again after this many seconds (random, so refused jobs spread).
RETRY_SLOT_SECONDS = (1.0, 3.0)
# ... and a job whose tenant could not be looked up (the database is down), after these.
DEPENDENCY_RETRY_SECONDS = (10.0, 20.0)
# A tenant's jobs refused a slot, oldest first (job ids): a worker that gives a slot of the
# tenant back puts the oldest of them back in its queue at once, instead of leaving it to
# its retry time. Kept this long after the last refusal; at most WAKE_TRIES ids are looked
# at per release (ids whose job ran meanwhile are dropped).
PARKED_KEY = "emailservice:tenant-parked:{tenant_id}"
PARKED_TTL = 600
WAKE_TRIES = 8
# How long a count of the workers is used before counting again.
WORKERS_COUNTED_SECONDS = 5.0
# Queues whose jobs run in the worker's own process, without a fork per job: sending is short
# work a user waits for, and keeps SMTP connections (app.services.outbox) from job to job.
IN_PROCESS_QUEUES = frozenset({QueueName.SEND.value})
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


class RedisOutage(Exception):
    """Redis stopped answering between jobs. Not a redis-py ConnectionError, so that RQ's
    dequeue loop (which would retry it with a log line per try) lets it through to
    ServiceWorker.work, which waits for Redis once for everything."""


class ServiceRQScheduler(RQScheduler):
    """RQ's scheduler inside a worker (it moves delayed and retried jobs into their queues),
    kept alive through a Redis outage: RQ's own dies at the first error and is restarted only
    by the worker's maintenance round (ten minutes), and every delayed job waits that long."""

    def work(self) -> None:
        self._install_signal_handlers()  # type: ignore[no-untyped-call]
        outage, born = Outage("Redis (scheduler of delayed jobs)", log), False
        while not self._stop_requested:
            try:
                if not born:
                    self.register_birth()
                    born = True
                if self.should_reacquire_locks or not self._acquired_locks:
                    self.acquire_locks()  # type: ignore[no-untyped-call]
                if self._acquired_locks:
                    self.heartbeat()  # type: ignore[no-untyped-call]
                    self.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                outage.over()
            except REDIS_ERRORS as exc:
                outage.wait(exc)
                continue
            time.sleep(self.interval)
        try:
            self.stop()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS:
            pass  # its lock and registration expire by themselves


_OUTAGE_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, RedisOutage)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServiceWorker(Worker):
    """An RQ worker that runs send jobs in its own process and every other job in a forked
    work-horse (which drops inherited connections first), and runs a tenant's job only in
    one of the tenant's slots."""

    _slot: tuple[int, str] | None = None  # (tenant, holder) of the job running now
    _tenant_slots: TenantSlots | None = None
    _workers_counted: tuple[float, int] = (0.0, 0)  # (when, how many), see live_workers
    _outage: Outage | None = None
    _inline = False  # a job runs in this process now (IN_PROCESS_QUEUES)

    @property
    def outage(self) -> Outage:
        if self._outage is None:
            self._outage = Outage("Redis", log)
        return self._outage

    def work(
        self,
        burst: bool = False,
        logging_level: str | None = None,
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        with_scheduler: bool = False,
        dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT,
    ) -> bool:
        """RQ's work loop, except that a Redis error anywhere in it is waited out instead of
        ending the worker (RQ quits on any error it did not expect)."""
        # Started while Redis is down, or it goes down during RQ's own start-up steps
        # (registering the worker, subscribing to its commands, starting the scheduler of
        # delayed jobs): wait, and take the steps again; each is safe to repeat.
        until_redis_answers(
            self.outage,
            lambda: self._start(burst, logging_level, date_format, log_format, with_scheduler),
        )
        self._dequeue_strategy = dequeue_strategy
        completed = 0
        self._install_signal_handlers()  # type: ignore[no-untyped-call]
        try:
            while True:
                try:
                    self.check_for_suspension(burst)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
                    if self._stop_requested:
                        log.info("worker %s stopping on request", self.name)
                        break
                    timeout = None if burst else self.dequeue_timeout
                    result = self.dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                    if result is None:
                        break  # burst done, or idle long enough
                    job, queue = result
                    self.execute_job(job, queue)
                    self.heartbeat()
                    completed += 1
                    if max_jobs is not None and completed >= max_jobs:
                        break
                except StopRequested:
                    break
                except _OUTAGE_ERRORS as exc:
                    try:
                        self._wait_for_redis(exc)
                    except StopRequested:
                        break
        finally:
            try:
                self.teardown()  # type: ignore[no-untyped-call]
            except REDIS_ERRORS:
                log.warning("worker %s stopped while Redis was unreachable", self.name)
        return bool(completed)

    def _start(
        self,
        burst: bool,
        logging_level: str | None,
        date_format: str,
        log_format: str,
        with_scheduler: bool,
    ) -> None:
        if self.pubsub is not None:  # an earlier try subscribed: drop that subscription
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=1)
            self.pubsub.close()
            self.pubsub, self.pubsub_thread = None, None
        self.bootstrap(logging_level, date_format, log_format)
        if with_scheduler:
            self._start_scheduler(burst, logging_level, date_format, log_format)

    def _set_ip_address(self, connection: Any) -> None:
        """RQ names the worker's connection in its constructor, the first thing that talks to
        Redis: a worker started while Redis is down waits here instead of exiting."""
        until_redis_answers(
            self.outage, lambda: super(ServiceWorker, self)._set_ip_address(connection)
        )

    def register_birth(self) -> None:
        """RQ's, which refuses a name that a live worker holds: that is this very worker
        when an earlier try of its start-up registered it before Redis went away."""
        pid = cast("bytes | None", self.connection.hget(self.key, "pid"))
        if pid == str(os.getpid()).encode():
            self.connection.hset(self.key, "death", "restarting")  # ours: let RQ redo it
        super().register_birth()  # type: ignore[no-untyped-call]

    def _wait_for_redis(self, exc: BaseException) -> None:
        """Wait until Redis answers again, then restart what the outage stopped."""
        cause = exc.__cause__ if isinstance(exc, RedisOutage) and exc.__cause__ else exc
        self.outage.failed(cause)
        while True:
            until_redis_answers(self.outage, self.connection.ping, self._stopping)
            try:
                self.heartbeat()  # re-registers a worker whose key expired meanwhile
                self._revive_scheduler()
                return
            except _OUTAGE_ERRORS as again:  # gone again already
                self.outage.wait(again.__cause__ or again)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """RQ's thread listening for commands (stop a job, shut down) retries a lost
        connection with a log line every two seconds; the work loop already says Redis is
        gone, once."""
        if isinstance(exc, REDIS_ERRORS):
            time.sleep(1.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def _stopping(self) -> bool:
        return bool(self._stop_requested)

    def _shutdown(self) -> None:
        """RQ's answer to SIGTERM, which writes the request to Redis first: during an outage
        that write fails inside the signal handler, and the error would surface in whatever
        the worker was doing. The stop is honoured all the same."""
        try:
            super()._shutdown()  # type: ignore[no-untyped-call]
        except REDIS_ERRORS:
            self._stop_requested = True
            if not self._horse_pid and not self._inline:
                raise StopRequested() from None

    def _revive_scheduler(self) -> None:
        """The scheduler process of delayed jobs, restarted now if it died (it should not:
        ServiceRQScheduler outlives outages) rather than at RQ's next maintenance."""
        scheduler = self.scheduler
        if scheduler is None or (scheduler._process and scheduler._process.is_alive()):
            return
        scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
    ) -> None:
        """RQ's, with the scheduler that outlives a Redis outage."""
        self.scheduler = ServiceRQScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if burst:
            if self.scheduler.acquired_locks:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                finally:
                    self.scheduler.release_locks()  # type: ignore[no-untyped-call]
                    self.scheduler.register_death()
            return
        # Started even without the locks: it takes them over if their holder dies.
        self.scheduler.start()  # type: ignore[no-untyped-call]

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat; when Redis is unreachable, a RedisOutage for the work loop, or
        nothing at all while a work-horse runs (the job goes on; the worker keeps watching
        it and beats again when Redis is back)."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        try:
            super().heartbeat(timeout)
        except REDIS_ERRORS as exc:
            if self._horse_pid or self._inline:
                self.outage.failed(exc)
                return
            raise RedisOutage(str(exc)) from exc
        self.outage.over()

    def handle_job_success(self, *args: Any, **kwargs: Any) -> None:
        """Recorded even across a Redis outage (in the work-horse, which holds the fact):
        a job that did its work must not be counted lost. RQ writes it in one transaction,
        so a retry is whole or nothing."""
        until_redis_answers(
            self.outage,
            lambda: super(ServiceWorker, self).handle_job_success(*args, **kwargs),
            self._stopping,
        )

    def handle_job_failure(self, *args: Any, **kwargs: Any) -> None:
        """Likewise: a failure (and the retry the job's policy asks for) is never lost."""
        until_redis_answers(
            self.outage,
            lambda: super(ServiceWorker, self).handle_job_failure(*args, **kwargs),
            self._stopping,
        )

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        until_redis_answers(
            self.outage,
            lambda: super(ServiceWorker, self).handle_execution_ended(job, queue, heartbeat_ttl),
        )

    def main_work_horse(self, job: Any, queue: Any) -> None:
        runtime.after_fork()
        request_id_var.set(job.id)
        super().main_work_horse(job, queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            self._execute_fairly(job, queue)
        except _OUTAGE_ERRORS as exc:
            # Redis went away before the job ran, or before its end was written down.
            if self._horse_pid:
                self.wait_for_horse()  # never leave a running job behind
                self._horse_pid = 0
            self._wait_for_redis(exc)
            until_redis_answers(self.outage, lambda: self._settle(job, queue), self._stopping)

    def _settle(self, job: Job, queue: Queue) -> None:
        """After an outage: a job whose outcome is recorded stays as it is; one that never
        started, or whose end was not recorded, runs again (jobs are safe to run twice)."""
        try:
            status = job.get_status(refresh=True)
        except InvalidJobOperation:
            return  # gone: finished and expired, or deleted
        if status not in (JobStatus.STARTED, JobStatus.QUEUED, JobStatus.CREATED, None):
            return  # finished, failed, scheduled for its retry, ...
        if status == JobStatus.QUEUED and job.id in queue.get_job_ids():
            return
        queue.started_job_registry.remove_executions(job)
        queue.intermediate_queue.remove(job.id)
        queue.enqueue_job(job, at_front=True)
        log.warning("job %s put back in its queue after a Redis outage", job.id)

    def _execute_fairly(self, job: Job, queue: Queue) -> None:
        try:
            tenant_id = self._tenant_of(job)
        except DEPENDENCY_ERRORS:
            # PostgreSQL is down: the job cannot run now either. Kept for later, not lost
            # (an exception here would stop the worker with the dequeued job in its hands).
            log.warning("cannot tell the tenant of job %s now; it waits", job.id)
            self._put_back(job, queue, None, DEPENDENCY_RETRY_SECONDS)
            return
        if tenant_id is None:
            self._run(job, queue)
            return
        holder = f"{_this_machine()}|{os.getpid()}|{uuid.uuid4().hex}"
        if not self._take_slot(tenant_id, holder):
            self._put_back(job, queue, tenant_id)
            return
        self._slot = (tenant_id, holder)
        try:
            self._run(job, queue)
        finally:
            self._slot = None
            # Released even if Redis is away now (after waiting for it): a slot left to its
            # lease would hold the tenant's next job back for up to a minute and a half.
            slots = self._slots()
            until_redis_answers(
                self.outage, lambda: slots.release(tenant_id, holder), self._stopping
            )
            self._wake(tenant_id)

    def _wake(self, tenant_id: int) -> None:
        """A slot of the tenant is free: the oldest of its refused jobs goes back to the
        front of its queue now. Best effort: a refused job runs at its retry time anyway."""
        key = PARKED_KEY.format(tenant_id=tenant_id)
        try:
            for _ in range(WAKE_TRIES):
                raw = cast("bytes | None", self.connection.lpop(key))
                if raw is None:
                    return
                job_id = raw.decode()
                try:
                    job = Job.fetch(job_id, connection=self.connection)
                except NoSuchJobError:
                    continue  # ran and expired meanwhile
                queue = Queue(job.origin, connection=self.connection)
                # Still waiting for its time: taken out of the registry here (one of two
                # callers wins the removal), so RQ's scheduler does not queue it as well.
                if not self.connection.zrem(queue.scheduled_job_registry.key, job_id):
                    continue
                queue.enqueue_job(job, at_front=True)
                log.debug("job %s of tenant %s woken: a slot is free", job_id, tenant_id)
                return
        except REDIS_ERRORS as exc:
            self.outage.failed(exc)

    def _run(self, job: Job, queue: Queue) -> None:
        """A send job in this process (IN_PROCESS_QUEUES), any other in a forked work-horse."""
        if queue.name not in IN_PROCESS_QUEUES:
            super().execute_job(job, queue)
            return
        # As RQ's SimpleWorker, with what its work-horse monitor does meanwhile (the job's
        # and the tenant slot's heartbeats) done by a thread. The job's timeout is RQ's
        # death penalty (SIGALRM in this thread), as in a work-horse; a killed worker leaves
        # its job `started`, which the outbox sweep settles, as for a killed work-horse.
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.job_monitoring_interval):
                self.maintain_heartbeats(job, execution)

        beating = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        beating.start()
        token = request_id_var.set(job.id)
        self._inline = True
        try:
            self.perform_job(job, queue, execution)
        finally:
            self._inline = False
            request_id_var.reset(token)
            stop.set()
            beating.join()
        self.set_state(WorkerStatus.IDLE)

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """RQ's heartbeat while a job runs (every job_monitoring_interval): the slot's too.
        Skipped while Redis is unreachable: the job runs on, and RQ's monitor, which would
        quit on the error, keeps waiting for the work-horse."""
        try:
            super().maintain_heartbeats(job, execution)
            if self._slot is not None:
                tenant_id, holder = self._slot
                if not self._slots().renew(tenant_id, holder):
                    log.warning("the slot of job %s had lapsed (tenant %s)", job.id, tenant_id)
        except REDIS_ERRORS as exc:
            self.outage.failed(exc)
            return
        self.outage.over()

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
        if tenant_id is not None:
            key = PARKED_KEY.format(tenant_id=tenant_id)
            with self.connection.pipeline() as pipe:
                pipe.rpush(key, job.id)
                pipe.expire(key, PARKED_TTL)
                pipe.execute()
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
    # What a crashed worker left half-done is taken up before new work starts, not when
    # someone asks: sends settled, syncs, message changes and indexing resumed (and every
    # minute by the scheduler's sweeps, which also cover a database that is down right now).
    sweeps = {
        "outbox sweep": outbox.recover,
        "resuming interrupted syncs": sync_control.resume_interrupted,
        "resuming pending message changes": messages.resume_pending,
        "indexing what was left unsearchable": indexing.index_pending,
    }
    for what, sweep in sweeps.items():
        try:
            sweep(ctx)
        except Exception:
            log.exception("%s at start failed", what)
    # Send jobs run in this process: no full collection stalls them for long.
    freeze_startup_objects()
    # with_scheduler: RQ's own scheduler moves jobs whose retry interval has passed back
    # into their queue; without it a Retry(interval=...) job would never run again.
    try:
        return bool(
            worker.work(burst=burst, with_scheduler=True, logging_level=ctx.settings.log_level)
        )
    finally:
        ctx.smtp_sessions.close()  # QUIT the SMTP sessions kept between send jobs
