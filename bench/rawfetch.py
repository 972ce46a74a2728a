"""The fetch ceiling: `UID FETCH 1:* (BODY.PEEK[])` per folder, draining the socket.

Nothing is parsed or stored: this is what Dovecot and the loopback socket can deliver, the
upper bound any client's initial sync could reach on this machine.
"""

from __future__ import annotations

import time

from bench.wire import Wire, quoted


def drain(host: str, port: int, user: str, password: str, folders: list[str]) -> tuple[float, int]:
    """(seconds, bytes received) for fetching every body of every folder."""
    began = time.perf_counter()
    wire = Wire(host, port)
    wire.login(user, password)
    received = 0
    for folder in folders:
        wire.command(f"EXAMINE {quoted(folder)}")
        _, n = wire.command("UID FETCH 1:* (BODY.PEEK[])", keep=False)
        received += n
    wire.close()
    return time.perf_counter() - began, received
