"""The periodic jobs, registered with rq-scheduler under fixed ids.

Registering is idempotent: a job already scheduled with the same function and interval keeps
its next run time, so restarting the scheduler (or running a second one) neither doubles a
periodic job nor runs it early; rq-scheduler's lock lets only one scheduler enqueue at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from rq_scheduler import Scheduler

from app.config import Settings
from app.queues import DEFAULT, SEND
from workers import runtime


@dataclass(frozen=True)
class PeriodicJob:
    id: str
    func: str
    interval_seconds: int
    queue: str


def periodic_jobs(settings: Settings) -> list[PeriodicJob]:
    """Every job the scheduler runs, with its interval."""
    return [
        PeriodicJob("periodic-heartbeat", "workers.jobs.heartbeat", 60, DEFAULT),
        PeriodicJob(
            "periodic-sync",
            "workers.jobs.sync_all_accounts",
            settings.sync_interval_seconds,
            DEFAULT,
        ),
        # Settles sends whose worker died and re-queues work whose job was lost.
        PeriodicJob("periodic-outbox-sweep", "workers.jobs.sweep_outbox", 60, SEND),
    ]


def register_periodic_jobs(scheduler: Scheduler, jobs: list[PeriodicJob]) -> None:
    """Schedule each job to run now and then every interval, unless it already is."""
    scheduled = {job.id: job for job in scheduler.get_jobs()}
    for job in jobs:
        current = scheduled.get(job.id)
        if (
            current is not None
            and current.func_name == job.func
            and current.meta.get("interval") == job.interval_seconds
            and current.origin == job.queue
        ):
            continue
        scheduler.cancel(job.id)
        scheduler.schedule(
            scheduled_time=datetime.now(timezone.utc),
            func=job.func,
            interval=job.interval_seconds,
            repeat=None,
            id=job.id,
            queue_name=job.queue,
            # A periodic job that waited longer than its interval is superseded by the next.
            ttl=job.interval_seconds,
            result_ttl=job.interval_seconds * 2,
        )


def run_scheduler(poll_seconds: int = 5, burst: bool = False) -> None:
    """Run rq-scheduler in the foreground."""
    scheduler = Scheduler(queue_name=DEFAULT, connection=runtime.redis(), interval=poll_seconds)
    register_periodic_jobs(scheduler, periodic_jobs(runtime.settings()))
    scheduler.run(burst=burst)
