"""Waitress, stopped gracefully: requests already received are answered before the process exits.

Waitress's own `serve()` dies on SIGTERM with whatever it was doing, so a restart during a
deploy cut requests off mid-way (nginx retries only idempotent ones on another instance; a
POST got a 502). Here SIGTERM (and SIGINT) first closes the listening socket, so nginx sends
new requests to the other instances, then keeps the event loop running until every request
received is answered and its response flushed, at most GRACE_SECONDS, then exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger(__name__)
GRACE_SECONDS = 30  # below the API unit's TimeoutStopSec


def serve(
    app,
    *,
    host: str,
    port: int,
    threads: int,
    stop: threading.Event | None = None,
    grace: float = GRACE_SECONDS,
) -> None:
    """Serve `app` until `stop` is set (by default: SIGTERM or SIGINT), then drain."""
    server = create_server(app, host=host, port=port, threads=threads, ident="emailservice")
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    log.info("serving", extra={"host": host, "port": server.effective_port, "threads": threads})
    while not stop.is_set():
        # One pass at a time (at most a second), so a set `stop` is seen promptly.
        server.asyncore.loop(timeout=1, map=server._map, count=1)
    # Stop accepting: the kernel refuses new connections, nginx picks another instance.
    wasyncore.dispatcher.close(server)
    deadline = time.monotonic() + grace
    while _busy(server) and time.monotonic() < deadline:
        server.asyncore.loop(timeout=0.05, map=server._map, count=1)
    if _busy(server):
        log.warning("stopping with requests still in flight", extra={"grace_seconds": grace})
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
    log.info("stopped")


def _busy(server) -> bool:
    """Whether a request is being received, waits, runs, or has output not yet sent."""
    dispatcher = server.task_dispatcher
    if dispatcher.active_count or dispatcher.queue:
        return True
    return any(
        channel.request is not None or channel.requests or channel.total_outbufs_len
        for channel in list(server.active_channels.values())
    )
