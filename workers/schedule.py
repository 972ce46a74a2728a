"""The scheduler process: the catalogue's periodic jobs (app.jobs), under fixed ids.

Registering is idempotent: a job already scheduled with the same function and interval keeps
its next run time, so restarting the scheduler (or running a second one) neither doubles a
periodic job nor runs it early; rq-scheduler's lock lets only one scheduler enqueue at a time.

Outages: rq-scheduler's own loop ends at the first Redis error (a heartbeat raises), and with
it the periodic sync, the outbox sweep and the resume of interrupted syncs. ServiceScheduler
waits for Redis instead (logging the outage once), registers itself and the periodic jobs
again (idempotently: a Redis that came back empty gets them back, one that kept its data
keeps their times), and carries on. It never touches PostgreSQL.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime, timezone

from rq_scheduler import Scheduler

from app.context import REDIS_ERRORS
from app.jobs import PeriodicJob, QueueName, periodic_jobs
from workers.runtime import Outage, context

log = logging.getLogger(__name__)


class ServiceScheduler(Scheduler):  # type: ignore[misc]
    """rq-scheduler's run loop, riding out Redis outages."""

    periodic: list[PeriodicJob] = []

    def run(self, burst: bool = False) -> None:
        outage, ready = Outage("Redis (scheduler)", log), False
        self._install_signal_handlers()
        try:
            while True:
                started = time.time()
                try:
                    if not ready:
                        self._register()
                        ready = True
                    self.heartbeat()
                    if self.acquire_lock():
                        self.enqueue_jobs()
                        self.heartbeat()
                        self.remove_lock()
                        if burst:
                            return
                    if outage.over():
                        ready = False  # register again: Redis may have come back empty
                        continue
                except REDIS_ERRORS as exc:
                    self._lock_acquired = False  # it expires by itself
                    ready = False
                    outage.wait(exc)
                    continue
                time.sleep(max(0.0, self._interval - (time.time() - started)))
        finally:
            try:
                self.remove_lock()
                self.register_death()
            except REDIS_ERRORS:
                pass  # both expire by themselves

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop it, Redis or not (rq-scheduler's handler writes to Redis
        first, and during an outage its error would be taken for the outage and waited out)."""

        def stop(signum: int, frame: object) -> None:
            log.info("scheduler stopping")
            raise SystemExit()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def _register(self) -> None:
        """Register this scheduler (again after an outage: its key may have expired or be
        gone) and the periodic jobs."""
        if self.connection.exists(self.key) and not self.connection.hexists(self.key, "death"):
            self.connection.delete(self.key)  # our own registration, from before the outage
        self.register_birth()
        register_periodic_jobs(self, self.periodic)


def register_periodic_jobs(scheduler: Scheduler, jobs: list[PeriodicJob]) -> None:
    """Schedule each job to run now and then every interval, unless it already is."""
    scheduled = {job.id: job for job in scheduler.get_jobs()}
    for periodic in jobs:
        spec = periodic.job
        current = scheduled.get(periodic.id)
        if (
            current is not None
            and current.func_name == spec.func
            and current.meta.get("interval") == periodic.interval_seconds
            and current.origin == spec.queue
        ):
            continue
        scheduler.cancel(periodic.id)
        scheduler.schedule(
            scheduled_time=datetime.now(timezone.utc),
            func=spec.func,
            interval=periodic.interval_seconds,
            repeat=None,
            id=periodic.id,
            queue_name=spec.queue.value,
            timeout=spec.timeout,
            # A periodic job that waited longer than its interval is superseded by the next.
            ttl=periodic.interval_seconds,
            result_ttl=periodic.interval_seconds * 2,
        )


def run_scheduler(poll_seconds: int = 5, burst: bool = False) -> None:
    """Run rq-scheduler in the foreground."""
    ctx = context()
    scheduler = ServiceScheduler(
        queue_name=QueueName.DEFAULT.value, connection=ctx.redis, interval=poll_seconds
    )
    scheduler.periodic = periodic_jobs(ctx.settings)
    scheduler.run(burst=burst)
