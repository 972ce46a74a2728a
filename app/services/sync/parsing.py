"""Parsing fetched mail in a process pool, one process per core, overlapping the fetch.

Parsing is pure Python (the feed parser, charsets, nh3, addresses) and was a third of an
initial sync, on one core, after the fetch and before the insert. Here each message is handed
to the pool as soon as its FETCH response is read (`imap.fetch(..., on_message=...)`), so the
pool parses a batch while the rest of it is still arriving and while its raw bytes are
inserted; the rows wait for the parse only when they are built.

The pool is started once per process, on its first batch, and kept: a warm worker process or
`emailservice sync` reuses it for every sync. (An RQ job runs in a work-horse forked for that
job, and a pool cannot cross a fork: the horse starts its own, by forking itself, a few
milliseconds.) Its processes are forked, so they start with the parent's modules loaded, and
each exits on its own when its parent is gone (a horse killed with SIGKILL leaves nothing
running).

Bounds: at most one batch is in the pool at a time per sync (the sync waits for a batch's
rows before fetching the next), so its input is bounded by the batch's bytes. A message that
kills its parse process (the pool breaks) is parsed again in the calling process, whose
`parse_message` never raises, and the pool is started afresh for the next batch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)

Fields = dict[str, Any]
ParseFn = Callable[[bytes], Fields]

# Below this many messages in a batch, the pool's round trips cost more than they save.
MIN_POOLED = 4

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_pid = 0


def _watch_parent(parent: int) -> None:
    """In a pool process: exit as soon as the process that started the pool is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parse-pool-parent-watch", daemon=True).start()


def workers() -> int:
    """Parse processes: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pool() -> ProcessPoolExecutor | None:
    """This process's parse pool (started on first use); None on a single core."""
    global _pool, _pool_pid
    if workers() < 2:
        return None
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            # A pool inherited over a fork belongs to the parent: never used, never shut down.
            _pool = ProcessPoolExecutor(
                max_workers=workers(),
                mp_context=multiprocessing.get_context("fork"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
            _pool_pid = os.getpid()
        return _pool


def _discard(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


class BatchParse:
    """The parse of one batch: `submit` each message as it arrives, `result` when its row is
    built (waiting for the pool, or parsing here when it was not pooled or the pool broke)."""

    def __init__(self, parse: ParseFn, expected: int) -> None:
        self.parse = parse
        self.executor = pool() if expected >= MIN_POOLED else None
        self.pending: dict[int, tuple[bytes, Future[Fields] | None]] = {}

    def submit(self, uid: int, raw: bytes) -> None:
        future = None
        if self.executor is not None:
            try:
                future = self.executor.submit(self.parse, raw)
            except (BrokenProcessPool, RuntimeError):
                _discard(self.executor)
                self.executor = None
        self.pending[uid] = (raw, future)

    def result(self, uid: int, raw: bytes) -> Fields:
        """The parsed fields of `raw` (fetched as `uid`)."""
        submitted = self.pending.pop(uid, None)
        if submitted is None or submitted[0] is not raw or submitted[1] is None:
            return self.parse(raw)
        try:
            return submitted[1].result()
        except BrokenProcessPool:
            log.warning("a parse process died; parsing in the sync's process", extra={"uid": uid})
            if self.executor is not None:
                _discard(self.executor)
                self.executor = None
            return self.parse(raw)

    def cancel(self) -> None:
        """Forget what was not used (a batch abandoned half-way)."""
        for _raw, future in self.pending.values():
            if future is not None:
                future.cancel()
        self.pending.clear()
