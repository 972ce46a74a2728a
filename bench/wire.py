"""A minimal IMAP client on a raw socket: the loader's MULTIAPPEND and the fetch ceiling.

Kept deliberately thin (no parsing beyond finding the tagged completion), so that what it
measures is the server and the socket, not a client library.
"""

from __future__ import annotations

import itertools
import socket


class ImapError(Exception):
    pass


class Wire:
    """One IMAP connection; commands are sent whole and answered by the raw response bytes."""

    def __init__(self, host: str, port: int, timeout: float = 120) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tags = (f"Q{n:05d}".encode() for n in itertools.count(1))
        self.buffer = b""
        greeting = self._read_line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"unexpected greeting {greeting[:80]!r}")

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ImapError("connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, text: bytes | str, *literals: bytes, keep: bool = True) -> tuple[bytes, int]:
        """Send one command whose literals are non-synchronizing (RFC 7888 LITERAL+); return
        (the response if `keep`, the number of bytes received). Raise unless it ends in OK."""
        tag = next(self.tags)
        head = text.encode() if isinstance(text, str) else text
        self.sock.sendall(tag + b" " + head + b"\r\n")
        return self._until(tag, keep)

    def send_raw(self, payload: bytes, keep: bool = False) -> tuple[bytes, int]:
        """Send a prepared command (tag included by the caller via `next_tag`)."""
        self.sock.sendall(payload)
        return self._until(self._pending, keep)

    def next_tag(self) -> bytes:
        self._pending = next(self.tags)
        return self._pending

    def _until(self, tag: bytes, keep: bool) -> tuple[bytes, int]:
        marker = b"\r\n" + tag + b" "
        data = bytearray(self.buffer) if keep else bytearray()
        window = b"\r\n" + self.buffer
        received = len(self.buffer)
        self.buffer = b""
        view = bytearray(1 << 20)
        while True:
            at = window.find(marker)
            if at >= 0:
                rest = window[at + 2 :]
                if b"\r\n" in rest:
                    status, self.buffer = rest.split(b"\r\n", 1)
                    if not status.startswith(tag + b" OK"):
                        raise ImapError(status.decode(errors="replace")[:300])
                    return bytes(data), received
            n = self.sock.recv_into(view)
            if n == 0:
                raise ImapError("connection closed")
            received += n
            chunk = bytes(view[:n])
            if keep:
                data += chunk
            # Only the tail can hold the start of the tagged line.
            window = window[-(len(marker) + 64) :] + chunk

    def login(self, user: str, password: str) -> None:
        self.command(f"LOGIN {quoted(user)} {quoted(password)}")

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (ImapError, OSError):
            pass
        self.sock.close()


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3); folder names here are ASCII."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
