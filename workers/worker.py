"""The RQ worker process: every queue of the service, JSON logs with the job id."""

from __future__ import annotations

from rq import Worker

from app.logs import request_id_var
from app.queues import QUEUES, get_queue
from workers import runtime


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
    # with_scheduler: RQ's own scheduler moves jobs whose retry interval has passed back
    # into their queue; without it a Retry(interval=...) job would never run again.
    return worker.work(burst=burst, with_scheduler=True, logging_level=runtime.settings().log_level)
