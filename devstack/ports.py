"""Free TCP ports on 127.0.0.1, reserved so that stacks starting at once never share one."""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# Below Linux's ephemeral range (32768+), so outgoing connections never grab a port between
# the moment we pick it and the moment its server binds it.
LOW, HIGH = 20000, 32000
# A handed-out port stays reserved this long: enough for the slowest server to bind it.
HOLD_SECONDS = 600
REGISTRY = Path(tempfile.gettempdir()) / "emailservice-devstack-ports.json"


def bindable(port: int) -> bool:
    """True when a listener could bind 127.0.0.1:port now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def _registry() -> Iterator[dict[str, list]]:
    """The reservation registry (port -> [owner, time]) under an exclusive lock, saved on exit."""
    fd = os.open(REGISTRY.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = json.loads(REGISTRY.read_text())
        except (OSError, ValueError):
            data = {}
        now = time.time()
        data = {p: v for p, v in data.items() if isinstance(v, list) and now - v[1] < HOLD_SECONDS}
        yield data
        tmp = REGISTRY.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.chmod(tmp, 0o666)
        os.replace(tmp, REGISTRY)
    finally:
        os.close(fd)


def allocate(owner: str, preferred: Sequence[int | None]) -> list[int]:
    """One free port per entry: the preferred one if free and not someone else's, else a new one."""
    chosen: list[int] = []
    with _registry() as reserved:

        def usable(port: int) -> bool:
            holder = reserved.get(str(port))
            return port not in chosen and (holder is None or holder[0] == owner) and bindable(port)

        for want in preferred:
            port = want if want and usable(want) else None
            tries = 0
            while port is None:
                tries += 1
                if tries > 2000:
                    raise OSError(f"no free port found between {LOW} and {HIGH}")
                candidate = random.randrange(LOW, HIGH)
                if usable(candidate):
                    port = candidate
            chosen.append(port)
            reserved[str(port)] = [owner, time.time()]
    return chosen


def release(owner: str) -> None:
    """Forget the reservations of a stack that stopped."""
    with _registry() as reserved:
        for port in [p for p, v in reserved.items() if v[0] == owner]:
            del reserved[port]
