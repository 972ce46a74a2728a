"""The service context of a worker process (or of the scheduler or the IDLE watcher).

Built lazily, once per process. RQ forks a work-horse per job; the horse keeps the context
but must not use the parent's pooled PostgreSQL connections (two processes on one socket
corrupt both), so `after_fork()` drops them without closing the parent's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from rq.exceptions import StopRequested

from app.config import Settings
from app.context import REDIS_ERRORS, ServiceContext

T = TypeVar("T")


@cache
def context() -> ServiceContext:
    """This process's service context, from the environment's settings."""
    return ServiceContext.build(Settings.load())


def after_fork() -> None:
    """Forget connections inherited from the parent process."""
    if context.cache_info().currsize:
        context().after_fork()


# Waiting for a dependency: first retry after this long, doubling up to the cap, so a
# returning server is seen within OUTAGE_MAX_WAIT seconds.
OUTAGE_FIRST_WAIT = 0.25
OUTAGE_MAX_WAIT = 2.0


class Outage:
    """One dependency's outage as one process sees it: logged once when it begins and once
    when it ends (not once per retry), with the wait before the next try."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self.since: float | None = None
        self._wait = OUTAGE_FIRST_WAIT

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; the seconds to wait before the next one."""
        if self.since is None:
            self.since = time.monotonic()
            self._wait = OUTAGE_FIRST_WAIT
            self.log.warning(
                "%s unreachable; waiting for it", self.what, extra={"error": _brief(exc)}
            )
        wait, self._wait = self._wait, min(self._wait * 2, OUTAGE_MAX_WAIT)
        return wait

    def wait(self, exc: BaseException) -> None:
        time.sleep(self.failed(exc))

    def over(self) -> bool:
        """Note a try that worked; True when it ended an outage."""
        if self.since is None:
            return False
        self.log.warning(
            "%s back", self.what, extra={"outage_seconds": round(time.monotonic() - self.since, 1)}
        )
        self.since = None
        return True


def _brief(exc: BaseException) -> str:
    """The error's class and first line: no URL or password (redis-py's messages name the
    host and port only, but a first line keeps logs short)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def until_redis_answers(
    outage: Outage, call: Callable[[], T], stopping: Callable[[], bool] = lambda: False
) -> T:
    """Run `call` until it gets through to Redis (for steps that must not be lost, like
    recording a job's result, and that are safe to repeat). StopRequested when the process
    is asked to stop meanwhile."""
    while True:
        try:
            result = call()
        except REDIS_ERRORS as exc:
            if stopping():
                raise StopRequested() from exc
            outage.wait(exc)
            continue
        outage.over()
        return result
