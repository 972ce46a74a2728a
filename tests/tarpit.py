"""An IMAP server of the tests' own that greets and then says nothing: a slow mail server.

On loopback only. Each connection gets `* OK` and then silence for `hold` seconds, after
which the server closes it, so a job on it lasts about `hold` seconds whatever its client's
timeouts. It counts its connections: how many are open now, and the most that ever were.
"""

from __future__ import annotations

import socket
import threading
import time


class Tarpit:
    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> Tarpit:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection: socket.socket) -> None:
        try:
            connection.sendall(b"* OK IMAP4rev1 tarpit ready\r\n")
            # Whatever the client sends is read and never answered.
            connection.settimeout(0.2)
            deadline = time.monotonic() + self.hold
            while time.monotonic() < deadline and not self._closing.is_set():
                try:
                    if not connection.recv(65536):
                        break  # the client gave up first
                except TimeoutError:
                    pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
            connection.close()
