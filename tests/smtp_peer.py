"""An SMTP server of the tests' own, on loopback, that misbehaves on purpose.

Real Postfix never drops a connection right after the final "." on request; this peer does.
Each connection follows the next script in `scripts` (then "accept"):
- "accept": a normal session; the message is kept in `received` (and relayed to `relay`,
  a real SMTP server, when set, so it lands in a real mailbox).
- "close_after_dot": reads the whole message, then closes without a reply.
- "close_mid_payload": closes after reading part of the payload (no "." seen).
- "hold_after_dot": keeps (and relays) the message, sets `holding`, then waits for `release`
  before replying 250: the window in which a test kills the sending worker.
- "accept_then_close": accepts one message, then closes the connection (as a server dropping
  an idle client does) without a word.
- "accept_then_cut": accepts one message, answers the RSET after it, then closes when the
  next message begins (a kept session that breaks while it is reused).
AUTH PLAIN/LOGIN accept any credentials. With `eightbitmime=False` it does not announce 8BITMIME
(RFC 6152), so a sending Postfix must convert 8-bit bodies to 7 bits for it; `mail_params` keeps
each MAIL command's parameters. It listens on `address` (loopback unless a test host must reach it).
"""

from __future__ import annotations

import smtplib
import socket
import socketserver
import threading
from collections.abc import Callable


class SmtpPeer:
    def __init__(
        self,
        relay: Callable[[str, list[str], bytes], None] | None = None,
        *,
        address: str = "127.0.0.1",
        eightbitmime: bool = True,
    ) -> None:
        self.scripts: list[str] = []
        self.received: list[bytes] = []
        self.mail_params: list[str] = []
        self.eightbitmime = eightbitmime
        self.sessions = 0
        self.relay = relay
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with peer._lock:
                    peer.sessions += 1
                    script = peer.scripts.pop(0) if peer.scripts else "accept"
                try:
                    peer._session(self.rfile, self.wfile, self.connection, script)
                except (OSError, ValueError):
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile, connection: socket.socket, script: str) -> None:
        def say(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        say("220 peer.test ESMTP test peer")
        sender, recipients, accepted = "", [], 0
        while True:
            line = rfile.readline(4096)
            if not line:
                return
            verb = line.decode("ascii", "replace").strip().split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                say("250-peer.test")
                if self.eightbitmime:
                    say("250-8BITMIME")
                say("250 AUTH PLAIN LOGIN")
            elif verb == "AUTH":
                if line.upper().startswith(b"AUTH LOGIN"):
                    say("334 VXNlcm5hbWU6")
                    rfile.readline()
                    say("334 UGFzc3dvcmQ6")
                    rfile.readline()
                say("235 2.7.0 Authentication successful")
            elif verb == "MAIL" and script == "accept_then_cut" and accepted:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
                return
            elif verb == "MAIL":
                argument = line.decode().split(":", 1)[1].strip()
                sender, _, params = argument.partition(" ")
                sender = sender.strip("<>")
                self.mail_params.append(params)
                recipients = []
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                say("250 2.1.5 Ok")
            elif verb == "DATA":
                say("354 End data with <CR><LF>.<CR><LF>")
                data = self._payload(rfile, connection, script)
                if data is None:
                    return
                if script == "close_after_dot":
                    connection.close()
                    return
                self.received.append(data)
                if self.relay is not None:
                    self.relay(sender, recipients, data)
                if script == "hold_after_dot":
                    self.holding.set()
                    self.release.wait(60)
                say(f"250 2.0.0 Ok: queued as PEER{len(self.received)}")
                accepted += 1
                if script == "accept_then_close":
                    connection.shutdown(socket.SHUT_RDWR)
                    connection.close()
                    return
            elif verb == "RSET":
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                return
            else:
                say("502 5.5.2 Error: command not recognized")

    @staticmethod
    def _payload(rfile, connection: socket.socket, script: str) -> bytes | None:
        """The message up to the final ".", un-dot-stuffed; None when closing mid-payload."""
        lines, read = [], 0
        while True:
            line = rfile.readline(1 << 20)
            if not line:
                return None
            read += len(line)
            if script == "close_mid_payload" and read > 64 * 1024:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
                return None
            if line == b".\r\n":
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)


def relay_to(host: str, port: int) -> Callable[[str, list[str], bytes], None]:
    """Pass what the peer accepts on to a real SMTP server (the stack's port-25 Postfix)."""

    def relay(sender: str, recipients: list[str], data: bytes) -> None:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.sendmail(sender, recipients, data)

    return relay
