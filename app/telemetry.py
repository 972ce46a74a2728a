"""Counters the jobs keep in Redis and /metrics exports.

Kept in Redis, not in process memory: RQ forks a work-horse per job, and whatever a
work-horse counted in its own memory is gone when the job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis

# Set by the scheduler's periodic heartbeat job: a stale value means a stalled scheduler or
# worker pool.
HEARTBEAT_KEY = "emailservice:heartbeat"
# Delivery attempts of outbox entries by outcome (deferred: retried later).
SEND_OUTCOME_KEY = "emailservice:send:outcomes"
SEND_OUTCOMES = ("sent", "failed", "uncertain", "deferred")
# Sync runs by outcome (complete; continued: hit its bounds; retry: a connection failed) and
# the messages they fetched.
SYNC_COUNTS_KEY = "emailservice:sync:counts"
SYNC_OUTCOMES = ("complete", "continued", "retry")


@dataclass(frozen=True)
class Snapshot:
    """Every counter, read at one moment."""

    sends: dict[str, float]  # by outcome
    syncs: dict[str, float]  # by outcome
    messages_fetched: float
    heartbeat: float | None  # Unix time


class Counters:
    """Counts outcomes of jobs in Redis."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def heartbeat(self) -> float:
        now = time.time()
        self.connection.set(HEARTBEAT_KEY, repr(now))
        return now

    def count_send(self, outcome: str) -> None:
        if outcome in SEND_OUTCOMES:
            self.connection.hincrby(SEND_OUTCOME_KEY, outcome)

    def count_sync(self, outcome: str, messages: int = 0) -> None:
        self.connection.hincrby(SYNC_COUNTS_KEY, outcome)
        if messages:
            self.connection.hincrby(SYNC_COUNTS_KEY, "messages", messages)

    def snapshot(self) -> Snapshot:
        sends: dict[bytes, bytes] = self.connection.hgetall(SEND_OUTCOME_KEY)  # type: ignore[assignment]
        syncs: dict[bytes, bytes] = self.connection.hgetall(SYNC_COUNTS_KEY)  # type: ignore[assignment]
        beat = self.connection.get(HEARTBEAT_KEY)
        return Snapshot(
            sends={o: float(sends.get(o.encode(), 0)) for o in SEND_OUTCOMES},
            syncs={o: float(syncs.get(o.encode(), 0)) for o in SYNC_OUTCOMES},
            messages_fetched=float(syncs.get(b"messages", 0)),
            heartbeat=float(beat) if beat is not None else None,  # type: ignore[arg-type]
        )
