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
from typing import TYPE_CHECKING, Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ThreadedTaskDispatcher

from app.context import freeze_startup_objects

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)
GRACE_SECONDS = 30  # below the API unit's TimeoutStopSec


def serve(
    app: WSGIApplication,
    *,
    host: str,
    port: int,
    threads: int,
    trusted_proxies: int = 0,
    stop: threading.Event | None = None,
    grace: float = GRACE_SECONDS,
) -> None:
    """Serve `app` until `stop` is set (by default: SIGTERM or SIGINT), then drain.

    `trusted_proxies` (TRUSTED_PROXIES): when the app trusts proxies in front of it, Waitress
    must hand their X-Forwarded-* headers on (the app's ProxyFix takes the last N). Waitress 3
    removes them by default, which made every client behind nginx one address, 127.0.0.1,
    sharing one per-address login limit. Without trusted proxies they are still removed.
    """
    freeze_startup_objects()  # no full collection stalls every request thread
    # A host with several addresses ("localhost" on Debian: 127.0.0.1 and ::1) gets a listening
    # server per address, and create_server() then returns none of them; every listener and
    # every connection is in this map. (fd -> dispatcher; types-waitress says socket.)
    sockets: dict[int, Any] = {}
    server = create_server(
        app,
        map=sockets,
        host=host,
        port=port,
        threads=threads,
        ident="emailservice",
        clear_untrusted_proxy_headers=trusted_proxies == 0,
    )
    listeners = [d for d in sockets.values() if isinstance(d, BaseWSGIServer)]
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    log.info(
        "serving",
        extra={"host": host, "port": port, "addresses": len(listeners), "threads": threads},
    )
    while not stop.is_set():
        # One pass at a time (at most a second), so a set `stop` is seen promptly.
        wasyncore.loop(timeout=1, map=sockets, count=1)
    # Stop accepting: the kernel refuses new connections, nginx picks another instance.
    for listener in listeners:
        wasyncore.dispatcher.close(listener)  # not listener.close(): it closes the trigger too
    deadline = time.monotonic() + grace
    while _busy(server.task_dispatcher, sockets) and time.monotonic() < deadline:
        wasyncore.loop(timeout=0.05, map=sockets, count=1)
    if _busy(server.task_dispatcher, sockets):
        log.warning("stopping with requests still in flight", extra={"grace_seconds": grace})
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
    log.info("stopped")


def _busy(tasks: ThreadedTaskDispatcher, sockets: dict[int, Any]) -> bool:
    """Whether a request is being received, waits, runs, or has output not yet sent."""
    if tasks.active_count or tasks.queue:
        return True
    return any(
        channel.request is not None or channel.requests or channel.total_outbufs_len
        for channel in list(sockets.values())
        if isinstance(channel, HTTPChannel)
    )
