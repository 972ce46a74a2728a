"""The service context of a worker process (or of the scheduler or the IDLE watcher).

Built lazily, once per process. RQ forks a work-horse per job; the horse keeps the context
but must not use the parent's pooled PostgreSQL connections (two processes on one socket
corrupt both), so `after_fork()` drops them without closing the parent's.
"""

from __future__ import annotations

from functools import cache

from app.config import Settings
from app.context import ServiceContext


@cache
def context() -> ServiceContext:
    """This process's service context, from the environment's settings."""
    return ServiceContext.build(Settings.load())


def after_fork() -> None:
    """Forget connections inherited from the parent process."""
    if context.cache_info().currsize:
        context().after_fork()
