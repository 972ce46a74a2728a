"""The RQ worker process: every queue of the service, JSON logs with the job id."""

from __future__ import annotations

import logging

from rq import Worker

from app.logs import request_id_var
from app.mail import tls_context
from app.queues import QUEUES, get_queue
from workers import runtime
from workers.jobs import sweep_outbox

log = logging.getLogger(__name__)


class ServiceWorker(Worker):
    """An RQ worker whose forked work-horses drop inherited connections first."""

    def main_work_horse(self, job, queue):
        runtime.after_fork()
        request_id_var.set(job.id)
        super().main_work_horse(job, queue)


def run_worker(queue_names: tuple[str, ...] = (), burst: bool = False) -> bool:
    """Consume the named queues (all of the service's when none), in priority order."""
    connection = runtime.redis()
    queues = [get_queue(name, connection) for name in (queue_names or QUEUES)]
    worker = ServiceWorker(queues, connection=connection)
    # Loaded once here and inherited by every forked work-horse, instead of once per job (the
    # B5 profile: a third of a send job's time was loading the CA store).
    try:
        tls_context(runtime.settings().mail_tls_ca_file or None)
    except (OSError, ValueError):
        log.exception("loading the TLS trust store failed; each job will try again")
    # Sends a crashed worker left half-done are settled before new work starts (and every
    # minute by the scheduler, which also covers a database that is down right now).
    try:
        sweep_outbox()
    except Exception:
        log.exception("outbox sweep at start failed")
    # with_scheduler: RQ's own scheduler moves jobs whose retry interval has passed back
    # into their queue; without it a Retry(interval=...) job would never run again.
    return worker.work(burst=burst, with_scheduler=True, logging_level=runtime.settings().log_level)
