"""The RQ worker process: every queue of the service, JSON logs with the job id."""

from __future__ import annotations

import logging
from typing import Any

from rq import Worker

from app.jobs import QUEUES, QueueName
from app.logs import request_id_var
from app.services import outbox
from workers import runtime

log = logging.getLogger(__name__)


class ServiceWorker(Worker):
    """An RQ worker whose forked work-horses drop inherited connections first."""

    def main_work_horse(self, job: Any, queue: Any) -> None:
        runtime.after_fork()
        request_id_var.set(job.id)
        super().main_work_horse(job, queue)


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
