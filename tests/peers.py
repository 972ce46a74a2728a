"""Hostile peers of the tests' own, on loopback only: servers that are not mail servers.

`Listener` accepts connections, sends `greeting` (or nothing at all: a server that never
greets), then holds each connection open, reading and discarding what the client sends,
until the test ends; with `drip`, it sends those bytes one at a time every `interval`
seconds, over and over, never ending a line (a tarpit each of whose waits is short). It
counts the connections it saw, so a test can show that a refused connection was never
attempted.
"""

from __future__ import annotations

import socket
import threading

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3 SECRETBANNER\r\n"
REDIS_ERROR = b"-ERR unknown command 'SECRETREDIS', with args beginning with:\r\n"


class Listener:
    def __init__(
        self,
        greeting: bytes | None = None,
        host: str = "127.0.0.1",
        drip: bytes | None = None,
        interval: float = 0.3,
    ) -> None:
        self.greeting = greeting
        self.drip = drip
        self.interval = interval
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = socket.create_server((host, 0), family=family, backlog=128)
        self.host = host
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def pair(self) -> str:
        """The HOST:PORT an allow-list entry names for this listener."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> Listener:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        try:
            self.server.close()
        finally:
            with self._lock:
                for conn in self._open:
                    try:
                        conn.close()
                    except OSError:
                        pass

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            if self.greeting is not None:
                conn.sendall(self.greeting)
            position = 0
            while self.drip and not self._stopped.wait(self.interval):
                conn.sendall(self.drip[position : position + 1])
                position = (position + 1) % len(self.drip)
            while not self._stopped.is_set() and conn.recv(4096):
                pass
        except OSError:
            pass
