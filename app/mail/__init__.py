"""Protocol adapters (IMAP, SMTP, MIME): no database, no Flask.

`ServerSettings` and `tls_context` are the one place connection parameters are built; the
adapters turn library and socket errors into `MailAuthError` / `MailConnectionError` at their
boundary, so callers handle two error types, not a dozen.

A mail error's text is what a tenant may read (a verify's 422, a sync's or an outbox entry's
`last_error`): a short category of our own words, and the server's own words only once it
greeted as the protocol we expected, cut short. Anything else (addresses, exception text, bytes
a non-mail service sent) goes to the log only, so the service cannot be used to read the
banners of whatever listens behind a host name.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from dataclasses import dataclass, field
from functools import lru_cache

from app.states import Security

log = logging.getLogger(__name__)

PEER_TEXT_CHARS = 200


class Category:
    """The short words a mail failure is reported with."""

    ADDRESS_NOT_ALLOWED = "address not allowed"
    CLEAR_TEXT_NOT_ALLOWED = "clear text not allowed"  # security "none", host not listed
    NAME_NOT_RESOLVED = "name not resolved"
    CONNECTION_REFUSED = "connection refused"
    HOST_UNREACHABLE = "host unreachable"
    CONNECTION_FAILED = "connection failed"
    TIMED_OUT = "timed out"
    TLS_FAILED = "TLS failed"
    CONNECTION_LOST = "connection lost"
    LOGIN_REFUSED = "login refused"
    NOT_IMAP = "not an IMAP server"
    NOT_SMTP = "not an SMTP server"
    PROTOCOL_ERROR = "protocol error"
    COMMAND_FAILED = "command failed"
    DEFERRED = "deferred"  # a 4xx reply while sending: tried again later
    REJECTED = "rejected"  # a 5xx reply while sending


class MailError(Exception):
    """A mail server could not be used; `str()` is what a tenant may read.

    `category` is our own short words; `peer_text`, when given, is the server's own words
    (only ever passed once it greeted as the expected protocol), kept to printable characters
    and cut to PEER_TEXT_CHARS.
    """

    def __init__(self, category: str, peer_text: str | None = None) -> None:
        self.category = category
        self.peer_text = printable(peer_text) if peer_text else None
        super().__init__(self.public)

    @property
    def public(self) -> str:
        return f"{self.category}: {self.peer_text}" if self.peer_text else self.category

    def __str__(self) -> str:
        return self.public


class MailAuthError(MailError):
    """The server refused the credentials."""


class MailConnectionError(MailError):
    """The server could not be reached or spoke unexpectedly (network, TLS, protocol)."""


@dataclass(frozen=True)
class LoginProblem:
    """Why a server refused settings being verified: `server` is "imap" or "smtp";
    `category` is the short word of `message` (Category)."""

    server: str
    message: str
    category: str


class VerifyBusy(Exception):
    """Every verification slot of this process is taken (the API answers 429)."""


def printable(text: str, limit: int = PEER_TEXT_CHARS) -> str:
    """`text` without control characters (no line breaks, no escapes), at most `limit` long."""
    kept = "".join(c if c.isprintable() else " " for c in text[: limit * 4])
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"


def network_category(exc: BaseException) -> str:
    """The category of a socket-level failure (TLS, time, refusal, loss)."""
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return Category.TLS_FAILED
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Category.TIMED_OUT
    if isinstance(exc, ConnectionRefusedError):
        return Category.CONNECTION_REFUSED
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)):
        return Category.CONNECTION_LOST
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Category.HOST_UNREACHABLE
    return Category.CONNECTION_FAILED


def failure(
    cls: type[MailError],
    category: str,
    detail: object,
    *,
    peer_text: str | None = None,
    server: ServerSettings | None = None,
) -> MailError:
    """A mail error for the tenant, with its details (exception, address) in the log only."""
    where = ""
    if server is not None:
        where = f"{server.host}:{server.port}"
        if server.address and server.address != server.host:
            where += f" ({server.address})"
    log.info(
        "mail server failure: %s",
        category,
        extra={"server": where or None, "detail": printable(str(detail), 500)},
    )
    return cls(category, peer_text)


@dataclass(frozen=True)
class ServerSettings:
    host: str  # the name the tenant gave: TLS verifies this name
    port: int
    security: Security
    username: str
    password: str = field(repr=False)
    # The address the host policy checked (app.mail.policy): the connection goes there and
    # nowhere else, so a name cannot resolve to another address between check and connect.
    address: str | None = None


@lru_cache(maxsize=8)
def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying TLS context: the system's CAs, plus `ca_file` (a private CA) when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
