"""RQ jobs: ids in, one service call, safe to run twice."""

from __future__ import annotations

import time

from app.queues import HEARTBEAT_KEY
from workers import runtime


def heartbeat() -> float:
    """Record that the scheduler and a worker are alive (exported by /metrics)."""
    now = time.time()
    runtime.redis().set(HEARTBEAT_KEY, repr(now))
    return now
