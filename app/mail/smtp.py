"""SMTP submission over smtplib, without any knowledge of the database.

Connections go to the address the host policy checked (`ServerSettings.address`) while TLS,
implicit or after STARTTLS, verifies the name the tenant gave. Every reply is bounded in bytes
(REPLY_MAX_BYTES: smtplib bounds a line, not the number of continuation lines), and with a
`deadline` every read and write waits at most until it, so a server that drips a byte every
few seconds cannot stretch a verification past its deadline.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from app.mail import (
    Category,
    MailAuthError,
    MailConnectionError,
    MailError,
    ServerSettings,
    failure,
    network_category,
    tls_context,
)

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 30
REPLY_MAX_BYTES = 64 * 1024
_MAXLINE = 8192  # one reply line, as smtplib bounds it


_REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9]([ -]|\r?\n)")


class _ReplyTooLong(smtplib.SMTPException):
    """A reply grew past REPLY_MAX_BYTES."""


class _NotSmtp(smtplib.SMTPException):
    """The peer sent something that is no SMTP reply."""


class _DeadlineReader(io.RawIOBase):
    """Reads the socket with each wait bounded by the deadline (when there is one) and the
    bytes of one reply bounded by REPLY_MAX_BYTES."""

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.budget = REPLY_MAX_BYTES

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.budget <= 0:
            raise _ReplyTooLong(f"a reply longer than {REPLY_MAX_BYTES} bytes")
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("deadline reached")
            self.sock.settimeout(remaining)
        view = memoryview(buffer)[: self.budget]
        count = self.sock.recv_into(view)
        self.budget -= count
        return count


class _Client(smtplib.SMTP):
    """smtplib's client, connecting to the checked address and verifying the tenant's name."""

    def __init__(
        self,
        server: ServerSettings,
        context: ssl.SSLContext | None,
        deadline: float | None,
    ) -> None:
        self.server = server
        self.context = context
        self.deadline = deadline
        self.reader: _DeadlineReader | None = None
        super().__init__(timeout=TIMEOUT_SECONDS)
        self._host = server.host  # what STARTTLS verifies (smtplib sets it only from __init__)

    def remaining(self) -> float:
        if self.deadline is None:
            return TIMEOUT_SECONDS
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline reached")
        return min(left, TIMEOUT_SECONDS)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # `host` is the tenant's name: smtplib keeps it as `_host` for STARTTLS's
        # server_hostname. The connection itself goes to the checked address only.
        sock = socket.create_connection(
            (self.server.address or host, port), self.remaining(), self.source_address
        )
        # The message and its "." go out in two writes (the outbox commits in between): with
        # Nagle's algorithm the "." waits for the ACK of the message's last segment, which the
        # server delays (40 ms on Linux) while it waits for the rest: a stall on every message.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.security == "ssl":
            assert self.context is not None
            try:
                sock.settimeout(self.remaining())
                sock = self.context.wrap_socket(sock, server_hostname=self.server.host)
            except BaseException:
                sock.close()
                raise
        return sock

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's reply reader, stricter: a line that is no SMTP reply ends the session at
        once (an SSH or Redis banner is not read on), socket errors keep their kind (smtplib
        turns a timeout into "disconnected"), and a reply is bounded in bytes."""
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        if self.file is None or self.reader is None:
            # A new socket (connected, or wrapped by STARTTLS, which drops `file`).
            self.reader = _DeadlineReader(self.sock, self.deadline)
            self.file = io.BufferedReader(self.reader)
        self.reader.budget = REPLY_MAX_BYTES
        lines = []
        while True:
            line = self.file.readline(_MAXLINE + 1)
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("connection closed")
            if not _REPLY_LINE.match(line) or len(line) > _MAXLINE:
                self.close()
                raise _NotSmtp(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def send(self, s: Any) -> None:
        if self.sock is not None and self.deadline is not None:
            self.sock.settimeout(self.remaining())
        super().send(s)

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if self.sock is not None:
            self.sock.settimeout(self.remaining())  # the handshake's waits
        result = super().starttls(*args, **kwargs)
        self.reader = None
        return result


def connect(
    server: ServerSettings, ca_file: str | None = None, *, deadline: float | None = None
) -> smtplib.SMTP:
    """An authenticated SMTP session (implicit TLS, STARTTLS, or plain for allowed private
    servers); MailAuthError or MailConnectionError with a category, details in the log."""
    # Built (and cached) only when used: loading the CA store costs milliseconds.
    context = tls_context(ca_file) if server.security != "none" else None
    client = _Client(server, context, deadline)
    try:
        code, greeting = client.connect(server.host, server.port)
    except (OSError, smtplib.SMTPException) as exc:
        client.close()
        category = Category.NOT_SMTP if isinstance(exc, _NotSmtp) else _category(exc)
        raise failure(MailConnectionError, category, exc, server=server) from None
    if code != 220:
        # Whatever answered is not an SMTP server ready for us: none of its words go further.
        client.close()
        raise failure(
            MailConnectionError, Category.NOT_SMTP, f"greeting {code} {greeting!r}", server=server
        )
    try:
        client.ehlo()
        if server.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        client.login(server.username, server.password)
    except smtplib.SMTPAuthenticationError as exc:
        client.close()
        raise failure(
            MailAuthError,
            Category.LOGIN_REFUSED,
            exc.smtp_code,
            peer_text=f"{exc.smtp_code} {_reply(exc.smtp_error)}",
            server=server,
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        client.close()
        # STARTTLS or AUTH not offered: for STARTTLS that is a TLS failure, never a fallback.
        tls = server.security == "starttls" and "STARTTLS" in str(exc)
        raise failure(
            MailConnectionError if tls else MailAuthError,
            Category.TLS_FAILED if tls else Category.LOGIN_REFUSED,
            exc,
            peer_text=None if tls else "the server offers no login",
            server=server,
        ) from None
    except smtplib.SMTPResponseException as exc:
        client.close()
        raise failure(
            MailConnectionError,
            Category.COMMAND_FAILED,
            exc,
            peer_text=f"{exc.smtp_code} {_reply(exc.smtp_error)}",
            server=server,
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        client.close()
        raise failure(MailConnectionError, _category(exc), exc, server=server) from None
    return client


def check_login(
    server: ServerSettings, ca_file: str | None = None, *, deadline: float | None = None
) -> None:
    """Authenticate and quit; raise MailAuthError or MailConnectionError on failure."""
    client = connect(server, ca_file, deadline=deadline)
    if deadline is not None and deadline - time.monotonic() <= 0:
        client.close()  # the login went through; a QUIT could wait on the server again
        return
    _close(client)


def _category(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return network_category(exc)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Category.CONNECTION_LOST
    return Category.PROTOCOL_ERROR


def _close(client: smtplib.SMTP, wait: float | None = None) -> None:
    """QUIT and close (waiting at most `wait` seconds for the reply when given)."""
    try:
        if wait is not None and client.sock is not None:
            client.sock.settimeout(wait)
        client.quit()
    except Exception:  # already disconnected
        client.close()


def _reply(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


# What a submission attempt can end in, besides success. The line between "retry" and
# "uncertain" is the final "." of DATA: before it, the server cannot have accepted anything.
class SendDeferred(MailError):
    """Not delivered, and safe to try again later: nothing complete reached the server."""


class SendRejected(MailError):
    """The server refused the message for good (a 5xx reply)."""


class SendUncertain(MailError):
    """The whole message went out but no reply came: the server may have accepted it."""


NO_FINAL_REPLY = "no reply after the message was sent; the server may have accepted it"
FINAL_REPLY_TIMEOUT = 300  # RFC 5321 4.5.3.2.6 allows 10 minutes; we wait 5
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def submit(
    server: ServerSettings,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    before_dot: Callable[[], None],
    ca_file: str | None = None,
    pool: SessionPool | None = None,
) -> str:
    """Deliver `data` to `recipients`; return the server's reply to the final ".".

    `before_dot` runs after the whole payload is written and before the final "." that
    commits the message: the caller records there that the outcome may now be unknown. Raises
    MailAuthError, SendRejected (5xx), SendDeferred (everything that is safe to retry: no
    connection, 4xx, a connection lost before the "."), or SendUncertain.
    Recipients refused with 5xx while others are accepted are reported in the returned text.

    With a `pool`, a session kept from an earlier message to the same server with the same
    credentials is used (after an RSET), and the session is kept again afterwards. A kept
    session that breaks before `before_dot` ran (the server closed it meanwhile) is dropped
    and the message goes out on a fresh session at once: the server discards a transaction
    whose "." never came, so nothing is sent twice. After `before_dot`, never.
    """
    if pool is not None:
        kept = pool.take(server)
        if kept is not None:
            try:
                return _transact(kept, server, sender, recipients, data, before_dot, pool)
            except _Stale:
                pass  # a fresh session below
    try:
        client = connect(server, ca_file)
    except MailConnectionError as exc:
        raise SendDeferred(exc.category, exc.peer_text) from None
    fresh = _Kept(client, _key(server) if pool is not None else "", time.monotonic())
    return _transact(fresh, server, sender, recipients, data, before_dot, pool)


def _transact(
    kept: _Kept,
    server: ServerSettings,
    sender: str,
    recipients: list[str],
    data: bytes,
    before_dot: Callable[[], None],
    pool: SessionPool | None,
) -> str:
    """One message on `kept`'s session; the session kept in `pool` after a success, closed
    otherwise. _Stale when a reused session broke before the "." was due."""
    client, reused, dotted = kept.client, kept.messages > 0, False

    def mark() -> None:
        nonlocal dotted
        dotted = True
        before_dot()

    try:
        result = _message(client, server, sender, recipients, data, mark)
    except SendDeferred as exc:
        if (
            reused
            and not dotted
            and (isinstance(exc, _Closing) or exc.category != Category.DEFERRED)
        ):
            client.close()
            log.info("a kept SMTP session broke before the message; sending on a fresh one")
            raise _Stale() from None
        _close(client)
        raise
    except BaseException:
        _close(client)
        raise
    if pool is not None:
        pool.give(kept)
    else:
        _close(client)
    return result


def _message(
    client: smtplib.SMTP,
    server: ServerSettings,
    sender: str,
    recipients: list[str],
    data: bytes,
    before_dot: Callable[[], None],
) -> str:
    refused = _envelope(client, sender, recipients)
    code, reply = _command("DATA", lambda: client.docmd("DATA"))
    if code != 354:
        _fail(code, reply, "DATA")
    payload = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", data))
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    try:
        client.send(payload)
    except (OSError, smtplib.SMTPException) as exc:
        raise _lost(SendDeferred, "while sending the message", exc, server) from None
    before_dot()
    try:
        client.send(b".\r\n")
    except (OSError, smtplib.SMTPException) as exc:
        # The write itself failed: the "." never left, the server discards the message.
        raise _lost(SendDeferred, "before the end of the message", exc, server) from None
    try:
        assert client.sock is not None  # the send()s above succeeded: still connected
        client.sock.settimeout(FINAL_REPLY_TIMEOUT)
        code, reply_bytes = client.getreply()
    except (OSError, smtplib.SMTPException) as exc:
        raise failure(SendUncertain, NO_FINAL_REPLY, exc, server=server) from None
    if client.sock is not None:
        client.sock.settimeout(TIMEOUT_SECONDS)
    reply = _reply(reply_bytes)
    if code // 100 != 2:
        _fail(code, reply, "the end of the message")
    result = f"{code} {reply}"
    if refused:
        result += "; not delivered to " + ", ".join(f"{r} ({m})" for r, m in refused.items())
    return result


class _Stale(Exception):
    """A kept session turned out dead before the message's "." was due."""


class _Closing(SendDeferred):
    """The server answered 421: it is closing the session."""


@dataclass
class _Kept:
    client: smtplib.SMTP
    key: str
    opened: float  # time.monotonic()
    used: float = 0.0  # when it last finished a message
    messages: int = 0  # messages sent on it


def _key(server: ServerSettings) -> str:
    """Which kept sessions may serve `server`: the same address, name, port, security and
    credentials (a digest: the pool holds no password)."""
    fields = (server.host, server.address, server.port, server.security, server.username)
    digest = hashlib.sha256("\0".join(map(str, fields)).encode())
    digest.update(b"\0" + server.password.encode())
    return digest.hexdigest()


class SessionPool:
    """Authenticated SMTP sessions kept between messages, in one process (a send worker).

    At most `size` sessions, one per server and credentials, each used for at most
    `max_messages` messages and `max_age` seconds and kept idle for at most `idle` seconds
    (servers drop idle clients after a few minutes: RFC 5321 4.5.3.2.7 says 5). Sessions past
    these are closed when the pool is next used (`prune`), the least recently used first
    when the pool is full. Not shared between threads of work: take, send, give."""

    def __init__(
        self,
        size: int = 8,
        idle: float = 30.0,
        max_messages: int = 100,
        max_age: float = 600.0,
    ) -> None:
        self.size, self.idle, self.max_messages, self.max_age = size, idle, max_messages, max_age
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def take(self, server: ServerSettings) -> _Kept | None:
        """A kept session with this server and these credentials that answers RSET, if any."""
        self.prune()
        with self._lock:
            kept = self._kept.pop(_key(server), None)
        if kept is None:
            return None
        try:
            code, _ = kept.client.rset()
        except (OSError, smtplib.SMTPException):
            kept.client.close()
            return None
        if code != 250:
            _close(kept.client)
            return None
        return kept

    def give(self, kept: _Kept) -> None:
        """Keep a session after a message it carried went through."""
        kept.messages += 1
        kept.used = time.monotonic()
        if kept.messages >= self.max_messages or kept.used - kept.opened >= self.max_age:
            _close(kept.client)
            return
        with self._lock:
            other = self._kept.pop(kept.key, None)
            self._kept[kept.key] = kept
        if other is not None:
            _close(other.client)
        self.prune()

    def prune(self) -> None:
        """Close the sessions idle or open too long, and the least recently used beyond
        `size`."""
        now = time.monotonic()
        with self._lock:
            ordered = sorted(self._kept.values(), key=lambda k: k.used)
            expired = [
                k for k in ordered if now - k.used > self.idle or now - k.opened > self.max_age
            ]
            live = [k for k in ordered if k not in expired]
            expired += live[: max(len(live) - self.size, 0)]
            for kept in expired:
                del self._kept[kept.key]
        for kept in expired:
            _close(kept.client, wait=2.0)

    def close(self) -> None:
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        for session in kept:
            _close(session.client, wait=2.0)

    def __len__(self) -> int:
        return len(self._kept)


def _envelope(client: smtplib.SMTP, sender: str, recipients: list[str]) -> dict[str, str]:
    """MAIL FROM and RCPT TO; the recipients refused for good (5xx), when others were taken."""
    code, reply = _command("MAIL FROM", lambda: client.mail(sender))
    if code // 100 != 2:
        _fail(code, reply, "MAIL FROM")
    refused: dict[str, str] = {}
    for recipient in recipients:
        code, reply = _command(f"RCPT TO {recipient}", functools.partial(client.rcpt, recipient))
        if code // 100 == 4:
            # Sending now would deliver to some recipients and never to this one: try the
            # whole message again later instead.
            raise SendDeferred(Category.DEFERRED, f"RCPT TO {recipient}: {code} {reply}")
        if code // 100 != 2:
            refused[recipient] = f"{code} {reply}"
    if len(refused) == len(recipients):
        raise SendRejected(Category.REJECTED, "every recipient: " + "; ".join(refused.values()))
    return refused


def _command(step: str, call: Callable[[], tuple[int, bytes]]) -> tuple[int, str]:
    try:
        code, reply = call()
    except (OSError, smtplib.SMTPException) as exc:
        raise _lost(SendDeferred, step, exc, None) from None
    return code, _reply(reply)


def _fail(code: int, reply: str, step: str) -> NoReturn:
    if code == 421:
        raise _Closing(Category.DEFERRED, f"{step}: {code} {reply}")
    if code // 100 == 4 or code < 200:
        raise SendDeferred(Category.DEFERRED, f"{step}: {code} {reply}")
    raise SendRejected(Category.REJECTED, f"{step}: {code} {reply}")


def _lost(
    cls: type[MailError], step: str, exc: BaseException, server: ServerSettings | None
) -> MailError:
    """A session that broke after the greeting: its category, the step in the log."""
    return failure(cls, _category(exc), f"{step}: {exc}", server=server)
