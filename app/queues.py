"""Redis connections and the RQ queues the service uses.

The web app enqueues jobs by their dotted name (`workers.jobs.heartbeat`) and never imports
`workers/`, so dependencies point one way.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

# Consumed in this order by a worker started without arguments: sending is what a user
# waits for, syncs are long and can wait behind it.
SEND = "send"
DEFAULT = "default"
SYNC = "sync"
QUEUES: tuple[str, ...] = (SEND, DEFAULT, SYNC)

# Set by the scheduler's periodic heartbeat job; /metrics exports it so a stalled scheduler
# or worker pool shows up as a stale timestamp.
HEARTBEAT_KEY = "emailservice:heartbeat"


def make_redis(redis_url: str) -> Redis:
    """A client whose calls fail within seconds when Redis is down, and reconnect after."""
    return Redis.from_url(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
    )


def get_queue(name: str, connection: Redis) -> Queue:
    """One of the service's queues; an unknown name is a programming error."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; the service uses {', '.join(QUEUES)}")
    return Queue(name, connection=connection)


def queue_depths(connection: Redis) -> dict[str, int]:
    """Jobs waiting in each queue."""
    return {name: Queue(name, connection=connection).count for name in QUEUES}
