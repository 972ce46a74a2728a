"""The scheduler process: the catalogue's periodic jobs (app.jobs), under fixed ids.

Registering is idempotent: a job already scheduled with the same function and interval keeps
its next run time, so restarting the scheduler (or running a second one) neither doubles a
periodic job nor runs it early; rq-scheduler's lock lets only one scheduler enqueue at a time.
"""

from __future__ import annotations

from datetime import datetime, timezone

from rq_scheduler import Scheduler

from app.jobs import PeriodicJob, QueueName, periodic_jobs
from workers.runtime import context


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
    scheduler = Scheduler(
        queue_name=QueueName.DEFAULT.value, connection=ctx.redis, interval=poll_seconds
    )
    register_periodic_jobs(scheduler, periodic_jobs(ctx.settings))
    scheduler.run(burst=burst)
