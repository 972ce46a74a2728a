"""IMAP over imapclient, without any knowledge of the database.

Every imapclient, imaplib and socket error becomes `MailAuthError` or `MailConnectionError` at
one boundary (`_boundary`), so the sync service handles two error types, not a dozen.

Protocol rules followed here:
- Folders are read with EXAMINE (read-only select) and bodies with BODY.PEEK[]: RFC822 and
  BODY[] would set \\Seen (RFC 3501 6.4.5); a sync never changes the user's mailbox.
- Messages are addressed by UID only (RFC 3501 2.3.1.1); sequence numbers never leave a session.
- `UID FETCH n:*` returns the newest message even when its UID is below n (RFC 3501 6.4.8):
  results are filtered to the UIDs asked for.
- Special-use attributes (RFC 6154) name the folder roles; names arrive in modified UTF-7
  (RFC 3501 5.1.3), which imapclient decodes.
- CONDSTORE (RFC 7162) is enabled when advertised: HIGHESTMODSEQ in STATUS and EXAMINE, and
  `FETCH ... (CHANGEDSINCE m)` for flag changes.
"""

from __future__ import annotations

import imaplib
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import imapclient
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_fetch_response, parse_response

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
from app.states import FolderRole

MB = 1024 * 1024
# Connecting (TCP and TLS) may take this long at most, within any command deadline.
TIMEOUT_SECONDS = 60
# Headers of a message stored headers-only: a partial fetch asks for at most this much.
HEADER_MAX_BYTES = 256 * 1024
# UID SEARCH answers one line per folder: above this many messages (without ESEARCH), it is
# asked in message-number ranges of this span, so the line stays far below IMAP_MAX_LINE_BYTES.
SEARCH_SPAN = 50_000
# LIST may go on past MAX_FOLDERS_PER_ACCOUNT (the rest are skipped and counted) up to this
# many times as many again (plus 10 000): beyond, it is a stream, not a folder list.
LIST_EXCESS_FACTOR = 10
# LIST-STATUS (RFC 5819): one STATUS response follows each LIST response. A server sending
# more than this many STATUS responses beyond the folders it listed is refused.
LIST_STATUS_SLACK = 100
# The largest value a STATUS item may have (PostgreSQL's bigint; UIDs and counts are 32-bit).
STATUS_VALUE_MAX = 2**63 - 1
# Closing a session (LOGOUT) waits this long at most.
LOGOUT_SECONDS = 5
# In IDLE, a response that began must be whole within this (or the command timeout).
IDLE_READ_SECONDS = 30
# One IDLE bringing more than this many times `idle_max_responses` responses is a flood.
IDLE_FLOOD_FACTOR = 10


@dataclass(frozen=True)
class ImapLimits:
    """How much an IMAP server may make us read, and for how long (from the settings).

    Every read goes through `BoundedIMAP4`, which enforces them; the defaults are the
    settings' defaults.
    """

    command_timeout: float = 120  # IMAP_COMMAND_TIMEOUT_SECONDS: any one command's response
    max_line_bytes: int = MB  # IMAP_MAX_LINE_BYTES: a response line outside literals
    max_message_bytes: int = 25 * MB  # MAX_MESSAGE_BYTES: a body read into memory
    max_folders: int = 2000  # MAX_FOLDERS_PER_ACCOUNT
    # A response that is not streamed (kept whole until its command completes): bytes and
    # lines. Far above what a legitimate server sends for STATUS, SELECT, SEARCH or a batch
    # of sizes and flags; they bound what a flood can make us hold.
    max_response_bytes: int = 64 * MB
    max_response_lines: int = 500_000
    # A streamed response (LIST, FETCH of bodies or flags) keeps nothing it does not need,
    # but is still cut at this many bytes (a server streaming forever).
    max_stream_bytes: int = 1024 * MB
    # IDLE: what one wake-up reads at most before it returns; what DONE may be answered with.
    idle_max_responses: int = 1000
    idle_max_bytes: int = MB


class ResponseTooLong(MailConnectionError):
    """A line, literal or whole response went past its bound; the connection was dropped."""

    def __init__(self, what: str = "response too long") -> None:
        super().__init__(what)


class ReadTimedOut(MailConnectionError):
    """The server did not finish a response within its deadline; the connection was dropped."""

    def __init__(self) -> None:
        super().__init__("timed out")


class LiteralTooLarge(ResponseTooLong):
    """The server announced a literal above the cap in force (a message body above
    MAX_MESSAGE_BYTES, whatever size it claimed before); nothing of it was read."""

    def __init__(self, size: int) -> None:
        super().__init__("response too long")
        self.size = size


class BatchAbandoned(MailError):
    """A fetch stopped early (a literal or the batch past its bound); the connection was
    dropped. `received` holds the messages read whole before that; the rest were not read."""

    def __init__(self, received: list[FetchedMessage], remaining: list[int]) -> None:
        super().__init__("fetch abandoned: message too large")
        self.received = received
        self.remaining = remaining


class BoundedIMAP4(imaplib.IMAP4):
    """imaplib's protocol engine on a socket whose every read is bounded in bytes and time.

    imaplib reads a literal whole (`read(size)`, whatever size the server announces) and a
    line up to a module-wide `_MAXLINE`, with a socket timeout that a server sending one byte
    every few seconds renews forever. Here the socket is read in chunks into a buffer of our
    own, and:

    - a line outside literals longer than `max_line_bytes` drops the connection;
    - a literal above `literal_cap` (by default the line bound; raised to MAX_MESSAGE_BYTES
      while message bodies are fetched) is refused before a byte of it is read, and so are
      the literals of one response together past the cap and a line;
    - each command's response must be complete within `command_timeout` seconds from when
      the command was sent (every recv waits only for the time left), and never past the
      absolute `deadline` (time.monotonic()) the connection was opened with;
    - a response kept whole is cut at `max_response_bytes` / `max_response_lines`.

    A bound hit closes the socket at once: a half-read response cannot be resynchronised,
    and nothing after it (LOGOUT included) waits on the server again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limits: ImapLimits,
        address: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        deadline: float | None = None,
    ) -> None:
        self.limits = limits
        self.absolute_deadline = deadline
        self._address = address or host
        self._implicit_tls = ssl_context
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer holds no line end
        self.literal_cap = limits.max_line_bytes
        self.max_bytes: int | None = limits.max_response_bytes
        self.max_lines: int | None = limits.max_response_lines
        self._most_seconds = float(limits.command_timeout)
        self._arm()
        super().__init__(host, port, timeout=TIMEOUT_SECONDS)

    # -- bounds ---------------------------------------------------------------------------

    def _arm(self, seconds: float | None = None) -> None:
        """A new response is awaited: its deadline and its byte and line counts start."""
        timeout = min(self._most_seconds, self._most_seconds if seconds is None else seconds)
        self.response_deadline = time.monotonic() + timeout
        self.response_bytes = 0
        self.response_lines = 0

    def expire_within(self, seconds: float) -> None:
        """From now on, give every response at most `seconds` (closing a session waits
        briefly), the current one included."""
        self._most_seconds = min(self._most_seconds, seconds)
        self.response_deadline = min(self.response_deadline, time.monotonic() + seconds)

    @contextmanager
    def bounds(
        self,
        literal_cap: int | None = None,
        max_bytes: int | None = -1,
        max_lines: int | None = -1,
    ) -> Iterator[None]:
        """Other bounds for the commands of the block (-1: unchanged; None: no such bound)."""
        saved = (self.literal_cap, self.max_bytes, self.max_lines)
        if literal_cap is not None:
            self.literal_cap = literal_cap
        if max_bytes != -1:
            self.max_bytes = max_bytes
        if max_lines != -1:
            self.max_lines = max_lines
        try:
            yield
        finally:
            self.literal_cap, self.max_bytes, self.max_lines = saved

    def remaining(self) -> float:
        """Seconds left for the current response (raises when none are)."""
        end = self.response_deadline
        if self.absolute_deadline is not None:
            end = min(end, self.absolute_deadline)
        left = end - time.monotonic()
        if left <= 0:
            self._fail(ReadTimedOut())
        return left

    def _fail(self, error: MailConnectionError) -> Any:
        self.drop()
        raise error

    def drop(self) -> None:
        """Close the socket now, without a word to the server."""
        sock = getattr(self, "sock", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # -- the socket -----------------------------------------------------------------------

    def _create_socket(self, timeout: float | None) -> socket.socket:
        wait = min(TIMEOUT_SECONDS, self.remaining())
        try:
            sock = socket.create_connection((self._address, self.port), timeout=wait)
        except socket.timeout:
            raise ReadTimedOut() from None
        # imaplib writes a literal and the CRLF that ends its command in two writes (APPEND):
        # with Nagle's algorithm the CRLF waits for the ACK of the literal's last segment, which
        # the server delays (40 ms on Linux) while it waits for the rest of the command.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._implicit_tls is not None:
            try:
                sock.settimeout(min(TIMEOUT_SECONDS, self.remaining()))
                # Verified against the name the account gave, not the address it resolved to.
                sock = self._implicit_tls.wrap_socket(sock, server_hostname=self.host)
            except socket.timeout:
                sock.close()
                raise ReadTimedOut() from None
            except BaseException:
                sock.close()
                raise
        return sock

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        self.sock = self._create_socket(timeout)
        self._arm()  # the greeting is the first response

    def _command(self, name: str, *args: Any) -> Any:
        # imaplib keeps every untagged response until someone pops it, across commands: what
        # a server sends unasked would pile up command after command. Each command starts
        # with none (READ-ONLY is kept: imaplib checks it before a command).
        for kind in [k for k in self.untagged_responses if k != "READ-ONLY"]:
            del self.untagged_responses[kind]
        return imaplib.IMAP4._command(self, name, *args)  # type: ignore[attr-defined]

    def send(self, data: Any) -> None:
        self._arm()
        try:
            self.sock.settimeout(self.remaining())
            self.sock.sendall(data)
        except socket.timeout:
            self._fail(ReadTimedOut())

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            self.sock.close()

    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> Any:
        if getattr(self, "_tls_established", False):
            raise self.abort("TLS session already established")
        if "STARTTLS" not in self.capabilities:
            raise self.abort("TLS not supported by server")
        context = ssl_context or ssl.create_default_context()
        typ, data = self._simple_command("STARTTLS")
        if typ != "OK":
            raise self.error("Couldn't establish TLS session")
        if self._buffer:
            # Bytes sent before the handshake would be taken as if they came over TLS
            # (response injection, CVE-2011-0411's kin): refuse them.
            self._fail(MailConnectionError("TLS failed: data before the handshake"))
        try:
            self.sock.settimeout(min(TIMEOUT_SECONDS, self.remaining()))
            self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        except socket.timeout:
            self._fail(ReadTimedOut())
        self._tls_established = True
        self._get_capabilities()
        return self._untagged_response(typ, data, "STARTTLS")

    def _fill(self) -> bool:
        """Read what the server sent next into the buffer; False at end of stream."""
        if self.max_bytes is not None and self.response_bytes > self.max_bytes:
            self._fail(ResponseTooLong())
        self.sock.settimeout(self.remaining())
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return bool(self._fail(ReadTimedOut()))
        except ssl.SSLWantReadError:
            return True
        self.response_bytes += len(chunk)
        self._buffer += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        limit = self.limits.max_line_bytes + 2  # the line and its CRLF
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                break
            self._scanned = len(self._buffer)
            if self._scanned > limit:
                self._fail(ResponseTooLong())
            if not self._fill():
                line = bytes(self._buffer)  # imaplib says EOF, or an unterminated line
                self._buffer.clear()
                self._scanned = 0
                return line
        if end + 1 > limit:
            self._fail(ResponseTooLong())
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        self._scanned = 0
        self.response_lines += 1
        if self.max_lines is not None and self.response_lines > self.max_lines:
            self._fail(ResponseTooLong())
        return line

    def _get_response(self) -> Any:
        self._response_literals = 0  # the literals of this one response, together
        return imaplib.IMAP4._get_response(self)  # type: ignore[attr-defined]

    def read(self, size: int) -> bytes:
        # One literal within the cap, and all of one response's literals together within the
        # cap and a line (a response may carry several: never a body and then some).
        self._response_literals = getattr(self, "_response_literals", 0) + size
        if size > self.literal_cap or (
            self._response_literals > self.literal_cap + self.limits.max_line_bytes
        ):
            self._fail(LiteralTooLarge(size))
        # Straight into one buffer of the literal's size (no growing buffer, no slices):
        # a body costs its size twice at most while it is read, not three or four times.
        data = bytearray(size)
        view = memoryview(data)
        have = min(size, len(self._buffer))
        view[:have] = self._buffer[:have]
        del self._buffer[:have]
        self._scanned = 0
        while have < size:
            self.sock.settimeout(self.remaining())
            try:
                got = self.sock.recv_into(view[have:], min(size - have, 1024 * 1024))
            except socket.timeout:
                return bytes(self._fail(ReadTimedOut()))
            except ssl.SSLWantReadError:
                continue
            if not got:
                raise self.abort("socket error: EOF")
            have += got
            self.response_bytes += got
            if self.max_bytes is not None and self.response_bytes > self.max_bytes:
                self._fail(ResponseTooLong())
        view.release()
        return bytes(data)

    def pending(self) -> bool:
        """Whether a response is already waiting (in our buffer, TLS's or the socket's)."""
        if self._buffer:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return self.readable(0)

    def readable(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the server to send something."""
        if self._buffer or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return True
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))


class BoundedClient(imapclient.IMAPClient):  # type: ignore[misc]  # untyped package
    """imapclient on `BoundedIMAP4`: the same API, every read bounded."""

    def __init__(
        self,
        server: ServerSettings,
        limits: ImapLimits,
        ssl_context: ssl.SSLContext | None,
        deadline: float | None,
    ) -> None:
        self._server = server
        self._limits = limits
        self._deadline = deadline
        super().__init__(
            server.host,
            port=server.port,
            ssl=server.security == "ssl",
            ssl_context=ssl_context,
            timeout=TIMEOUT_SECONDS,
        )
        # imaplib at debug 5 formats the repr of every literal it stores, whole; 4 logs the
        # lines only (imapclient routes them to its logger, kept at INFO: app/logs.py).
        self._imap.debug = 4

    def _create_IMAP4(self) -> BoundedIMAP4:
        return BoundedIMAP4(
            self._server.host,
            self._server.port,
            limits=self._limits,
            address=self._server.address,
            ssl_context=self.ssl_context if self.ssl else None,
            deadline=self._deadline,
        )

    def _set_read_timeout(self) -> None:
        pass  # every read sets its own timeout: the time left for its response

    @property
    def transport(self) -> BoundedIMAP4:
        imap: BoundedIMAP4 = self._imap
        return imap


ROLE_ATTRIBUTES: dict[bytes, FolderRole] = {
    b"\\sent": FolderRole.SENT,
    b"\\drafts": FolderRole.DRAFTS,
    b"\\trash": FolderRole.TRASH,
    b"\\junk": FolderRole.JUNK,
    b"\\archive": FolderRole.ARCHIVE,
}
# Servers without SPECIAL-USE: the common names.
ROLE_NAMES: dict[str, FolderRole] = {
    "sent": FolderRole.SENT,
    "sent items": FolderRole.SENT,
    "sent messages": FolderRole.SENT,
    "sent mail": FolderRole.SENT,
    "drafts": FolderRole.DRAFTS,
    "draft": FolderRole.DRAFTS,
    "trash": FolderRole.TRASH,
    "deleted items": FolderRole.TRASH,
    "deleted messages": FolderRole.TRASH,
    "bin": FolderRole.TRASH,
    "junk": FolderRole.JUNK,
    "spam": FolderRole.JUNK,
    "junk e-mail": FolderRole.JUNK,
    "archive": FolderRole.ARCHIVE,
    "archives": FolderRole.ARCHIVE,
}
SYSTEM_FLAGS = {
    b"\\seen": "seen",
    b"\\flagged": "flagged",
    b"\\answered": "answered",
    b"\\draft": "draft",
}


class FolderGone(MailError):
    """The server refused to open a folder (deleted or renamed since it was listed)."""


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int | None
    messages: int
    highestmodseq: int | None

    @classmethod
    def of(cls, found: dict[Any, Any]) -> FolderStatus | None:
        """From STATUS (or EXAMINE) items (`found`, bytes names); None when the server sent
        no UIDVALIDITY or message count, or a value that is no number or out of range."""

        def number(name: bytes) -> int | None:
            value = found.get(name)
            if isinstance(value, bytes) and value.isdigit() and len(value) <= 20:
                value = int(value)
            if isinstance(value, int) and 0 <= value <= STATUS_VALUE_MAX:
                return value
            if value is not None:
                raise ValueError(name)
            return None

        try:
            validity = number(b"UIDVALIDITY")
            messages = number(b"MESSAGES")
            uidnext = number(b"UIDNEXT")
            modseq = number(b"HIGHESTMODSEQ")
        except ValueError:
            return None
        if not validity or messages is None:
            return None
        return cls(uidvalidity=validity, uidnext=uidnext, messages=messages, highestmodseq=modseq)


@dataclass(frozen=True)
class RemoteFolder:
    name: str  # decoded, "/" as separator, INBOX upper-case
    remote_name: str  # as the server names it (decoded from modified UTF-7)
    delimiter: str | None
    role: FolderRole | None
    # The folder's STATUS when LIST returned it (LIST-STATUS, RFC 5819), else None.
    status: FolderStatus | None = None


@dataclass(frozen=True)
class Flags:
    seen: bool
    flagged: bool
    answered: bool
    draft: bool
    keywords: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Iterable[bytes | str]) -> Flags:
        found = {"seen": False, "flagged": False, "answered": False, "draft": False}
        keywords = []
        for flag in raw:
            text = flag.decode("utf-8", "replace") if isinstance(flag, bytes) else flag
            name = SYSTEM_FLAGS.get(text.lower().encode())
            if name:
                found[name] = True
            elif text.lower() != "\\recent":
                keywords.append(text)
        return cls(keywords=tuple(keywords), **found)


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    flags: Flags
    internal_date: datetime | None
    size: int
    raw: bytes  # the whole message; when too_large, its header only (b"" if even that was)
    modseq: int | None
    too_large: bool = False  # above MAX_MESSAGE_BYTES (said or found): stored headers-only


@dataclass(frozen=True)
class FlagChange:
    uid: int
    flags: Flags
    modseq: int | None


@contextmanager
def _boundary(what: str, greeted: bool = True) -> Iterator[None]:
    """Translate every library and socket error into the service's own mail errors, with a
    category; the server's own words only once it `greeted` as an IMAP server."""
    try:
        yield
    except MailError:
        raise
    except LoginError as exc:
        raise failure(MailAuthError, Category.LOGIN_REFUSED, exc, peer_text=_text(exc)) from None
    except OSError as exc:  # socket errors, timeouts and TLS (ssl.SSLError is an OSError)
        raise failure(MailConnectionError, network_category(exc), f"{what}: {exc}") from None
    except imaplib.IMAP4.abort as exc:  # the connection broke, or the peer spoke no IMAP
        if "socket error" in str(exc):
            category, peer = Category.CONNECTION_LOST, None
        elif not greeted:
            category, peer = Category.NOT_IMAP, None
        else:
            category, peer = Category.PROTOCOL_ERROR, f"{what}: {_text(exc)}"
        raise failure(MailConnectionError, category, f"{what}: {exc}", peer_text=peer) from None
    except (IMAPClientError, imaplib.IMAP4.error) as exc:
        if not greeted:  # no "* OK" or "* PREAUTH" greeting: none of its words go further
            raise failure(MailConnectionError, Category.NOT_IMAP, f"{what}: {exc}") from None
        raise failure(
            MailConnectionError,
            Category.COMMAND_FAILED,
            f"{what}: {exc}",
            peer_text=f"{what}: {_text(exc)}",
        ) from None


def connect(
    server: ServerSettings,
    ca_file: str | None = None,
    limits: ImapLimits | None = None,
    deadline: float | None = None,
) -> BoundedClient:
    """A logged-in client; `security` chooses implicit TLS, STARTTLS or (allowed private
    servers only) none. The connection goes to `server.address` (the address the host policy
    checked) while TLS verifies `server.host`.

    Every read is bounded (`BoundedIMAP4`, with `limits`); `deadline` (time.monotonic()) ends
    everything, connecting and logging in included, at that moment (an account's
    verification has one deadline for the whole).
    """
    # Built (and cached) only when used: loading the CA store costs milliseconds.
    context = tls_context(ca_file) if server.security != "none" else None
    with _boundary(f"connection to {server.host}:{server.port}", greeted=False):
        client = BoundedClient(
            server,
            limits or ImapLimits(),
            context if server.security == "ssl" else None,
            deadline,
        )
    try:
        # The step's name is what a tenant may read with the server's words: no address.
        if server.security == "starttls":
            try:
                with _boundary("STARTTLS"):
                    client.starttls(context)
            except MailConnectionError as exc:
                # Refused or not offered: no TLS, so no login (never a fallback).
                if exc.category in (Category.PROTOCOL_ERROR, Category.COMMAND_FAILED):
                    raise failure(MailConnectionError, Category.TLS_FAILED, exc) from None
                raise
        with _boundary("LOGIN"):
            client.login(server.username, server.password)
    except MailError:
        _close(client)
        raise
    # Aware datetimes for INTERNALDATE, not local-time naive ones.
    client.normalise_times = False
    return client


def check_login(
    server: ServerSettings,
    ca_file: str | None = None,
    limits: ImapLimits | None = None,
    deadline: float | None = None,
) -> None:
    """Log in and out; raise MailAuthError or MailConnectionError on failure."""
    _close(connect(server, ca_file, limits, deadline))


class ImapSession:
    """One logged-in connection, with the operations the sync needs."""

    def __init__(
        self,
        client: BoundedClient,
        server: ServerSettings | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.client = client
        self.limits: ImapLimits = client._limits
        self._server = server
        self._ca_file = ca_file
        self._examined: tuple[str, int] | None = None  # (folder, UIDVALIDITY) last EXAMINEd
        self.folders_skipped = 0  # by the last folders(): over MAX_FOLDERS_PER_ACCOUNT
        self._idle_responses = 0  # read during the current IDLE
        self._greet()

    def _greet(self) -> None:
        client = self.client
        with _boundary("CAPABILITY"):
            caps = {c.upper() for c in client.capabilities()}
        self.condstore = b"CONDSTORE" in caps or b"QRESYNC" in caps
        self.idle_supported = b"IDLE" in caps
        self.move_supported = b"MOVE" in caps
        self.uidplus = b"UIDPLUS" in caps
        self.esearch = b"ESEARCH" in caps
        self.list_status = b"LIST-STATUS" in caps
        self.special_use = b"SPECIAL-USE" in caps
        if self.condstore:
            with _boundary("ENABLE CONDSTORE"):
                client.enable("CONDSTORE")

    @classmethod
    def open(
        cls,
        server: ServerSettings,
        ca_file: str | None = None,
        limits: ImapLimits | None = None,
    ) -> ImapSession:
        return cls(connect(server, ca_file, limits), server, ca_file)

    @property
    def transport(self) -> BoundedIMAP4:
        return self.client.transport

    def reconnect(self) -> None:
        """A new connection in place of this one (dropped after a bound was hit), with the
        folder that was examined examined again; its UIDVALIDITY must not have changed."""
        if self._server is None:
            raise MailConnectionError("cannot reconnect: opened without its settings")
        self.transport.drop()
        self.client = connect(self._server, self._ca_file, self.limits)
        self._greet()
        if self._examined is not None:
            folder, validity = self._examined
            if self.examine(folder).uidvalidity != validity:
                raise MailConnectionError(f"UIDVALIDITY of {folder} changed during the sync")

    def close(self) -> None:
        _close(self.client)

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stream(self, kind: str, *args: str) -> Iterator[list[Any]]:
        """Send a command and yield the untagged `kind` responses one at a time, as they
        arrive, keeping none of them (imaplib would hold them all until the command ends).

        Other untagged responses are dropped (BYE and READ-ONLY kept a few deep). The stream
        is bounded by the command's deadline and `max_stream_bytes`; the caller bounds what it
        keeps.
        """
        for _, found in self._stream_kinds((kind,), *args):
            yield found

    def _stream_kinds(self, kinds: tuple[str, ...], *args: str) -> Iterator[tuple[str, list[Any]]]:
        """`_stream` of several kinds of untagged responses: (kind, responses) as they come."""
        imap = self.transport
        with imap.bounds(max_bytes=self.limits.max_stream_bytes, max_lines=None):
            tag = imap._command(*args)
            while True:
                result: Any = imap.tagged_commands[tag]
                if result is not None:
                    del imap.tagged_commands[tag]
                    break
                imap._check_bye()
                imap._get_response()
                found = [(k, imap.untagged_responses.pop(k, None)) for k in kinds]
                # Of the rest, only what imaplib itself looks at (a few deep): a server that
                # invents a new response name per line must not grow the dict either.
                for name in list(imap.untagged_responses):
                    if name in ("BYE", "READ-ONLY"):
                        del imap.untagged_responses[name][:-4]
                    else:
                        del imap.untagged_responses[name]
                for k, responses in found:
                    if responses:
                        yield k, responses
        typ, data = result
        if typ != "OK":
            raise IMAPClientError(f"{args[0]} {args[1] if len(args) > 1 else ''}: {data!r}")

    def folders(self, status: bool = False) -> list[RemoteFolder]:
        """Selectable folders, with their role (RFC 6154) and decoded name: at most
        `max_folders` of them (INBOX always among them); how many more the server listed is
        left in `folders_skipped`. The LIST response is read as it arrives.

        With `status`, on a server with LIST-STATUS (RFC 5819), each folder carries its STATUS
        from the same round trip (`RemoteFolder.status`; None for a folder whose STATUS was
        missing or malformed: ask `status()` for it). Without LIST-STATUS, none does."""
        kept: list[RemoteFolder] = []
        inbox: RemoteFolder | None = None
        skipped = 0
        limit = self.limits.max_folders
        command = ['""', '"*"']
        if status and self.list_status:
            items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
            if self.condstore:
                items.append("HIGHESTMODSEQ")
            # An extended LIST returns special-use attributes only when asked (RFC 6154 5.1).
            special = "SPECIAL-USE " if self.special_use else ""
            command.append(f"RETURN ({special}STATUS ({' '.join(items)}))")
        statuses: dict[str, FolderStatus | None] = {}
        listed = answered = 0
        with _boundary("LIST"):
            for kind, responses in self._stream_kinds(("LIST", "STATUS"), "LIST", *command):
                if kind == "STATUS":
                    for remote, status_found in self._proc_status(responses):
                        answered += 1
                        if remote is not None and remote not in statuses:
                            statuses[remote] = status_found
                    if answered > listed + LIST_STATUS_SLACK:
                        # More STATUS answers than folders: not a folder list any more.
                        self.transport.drop()
                        raise ResponseTooLong()
                    continue
                for attributes, delimiter, remote in self.client._proc_folder_list(responses):
                    listed += 1
                    attrs = {a.lower() for a in attributes}
                    if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
                        continue
                    delim = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
                    name = display_name(remote, delim)
                    folder = RemoteFolder(name, remote, delim, _role(name, attrs))
                    if name == "INBOX":
                        inbox = folder
                    elif len(kept) < limit - 1:
                        kept.append(folder)
                    else:
                        skipped += 1
                        if skipped > LIST_EXCESS_FACTOR * limit + 10_000:
                            # Not a mailbox any more but a stream: stop reading it.
                            self.transport.drop()
                            raise ResponseTooLong()
        self.folders_skipped = skipped
        found = ([inbox] if inbox else []) + kept
        if statuses:
            found = [replace(f, status=statuses.get(f.remote_name)) for f in found]
        return found

    def _proc_status(self, responses: list[Any]) -> list[tuple[str | None, FolderStatus | None]]:
        """(folder, its STATUS) of untagged STATUS responses: a malformed one gives no STATUS
        (None), and one that does not even name its folder no folder (None)."""
        parsed: list[Any] = []
        try:
            parsed = list(parse_response([r for r in responses if r not in (b"", None)]))
        except (IMAPClientError, ValueError):  # unbalanced, or a number of 4300+ digits
            return [(None, None)]
        found: list[tuple[str | None, FolderStatus | None]] = []
        for index in range(0, len(parsed) - 1, 2):
            remote, items = parsed[index], parsed[index + 1]
            if isinstance(remote, int):
                remote = str(remote)
            elif isinstance(remote, bytes):
                try:
                    remote = decode_utf7(remote) if self.client.folder_encode else remote.decode()
                except UnicodeError:
                    remote = None
            if not isinstance(remote, str):
                found.append((None, None))
                continue
            if not isinstance(items, tuple) or len(items) % 2:
                found.append((remote, None))
                continue
            pairs = {
                name.upper(): items[i + 1]
                for i, name in enumerate(items)
                if i % 2 == 0 and isinstance(name, bytes)
            }
            found.append((remote, FolderStatus.of(pairs)))
        return found or [(None, None)]

    def status(self, folder: str) -> FolderStatus:
        """STATUS without selecting: the cheap check for "anything changed?"."""
        what = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"]
        if self.condstore:
            what.append(b"HIGHESTMODSEQ")
        with _boundary(f"STATUS {folder}"):
            try:
                found = self.client.folder_status(folder, what)
            except imaplib.IMAP4.abort:
                raise  # the connection broke: not the folder's fault
            except (IMAPClientError, ValueError) as exc:  # NO or BAD, or a 4300-digit number
                raise FolderGone(
                    Category.COMMAND_FAILED, peer_text=f"STATUS {folder}: {_text(exc)}"
                ) from None
        status = FolderStatus.of({k.upper(): v for k, v in found.items()})
        if status is None:
            raise FolderGone(Category.COMMAND_FAILED, peer_text=f"STATUS {folder}: malformed")
        return status

    def examine(self, folder: str) -> FolderStatus:
        """Select `folder` read-only (EXAMINE)."""
        status = self._select(folder, readonly=True)
        self._examined = (folder, status.uidvalidity)
        return status

    def _select(self, folder: str, readonly: bool) -> FolderStatus:
        command = "EXAMINE" if readonly else "SELECT"
        with _boundary(f"{command} {folder}"):
            try:
                found = self.client.select_folder(folder, readonly=readonly)
            except imaplib.IMAP4.abort:
                raise
            except IMAPClientError as exc:
                raise FolderGone(
                    Category.COMMAND_FAILED, peer_text=f"{command} {folder}: {_text(exc)}"
                ) from None
        status = FolderStatus(
            uidvalidity=int(found[b"UIDVALIDITY"]),
            uidnext=int(found[b"UIDNEXT"]) if b"UIDNEXT" in found else None,
            messages=int(found[b"EXISTS"]),
            highestmodseq=int(found[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in found else None,
        )
        self._exists = status.messages
        return status

    def uids(self, from_uid: int | None = None) -> set[int]:
        """UIDs in the selected folder, all or those >= from_uid.

        A UID SEARCH answer is one line; for a folder with a million messages it would pass
        IMAP_MAX_LINE_BYTES. With ESEARCH (RFC 4731) the answer is a compact set; without it,
        a folder above SEARCH_SPAN messages is searched by message-number ranges of
        SEARCH_SPAN (at most that many UIDs per line, however sparse the UIDs are; numbers
        cannot shift in between: a server sends no EXPUNGE during SEARCH, RFC 3501 7.4.1).
        """
        start = from_uid or 1
        exists = getattr(self, "_exists", 0)
        with _boundary("UID SEARCH"):
            if self.esearch:
                found = self._esearch(f"{start}:*")
            elif exists <= SEARCH_SPAN:
                found = {int(u) for u in self.client.search(["UID", f"{start}:*"])}
            else:
                found = set()
                for low in range(1, exists + 1, SEARCH_SPAN):
                    # The last range ends at "*": mail that arrived since EXAMINE is in it.
                    high = str(low + SEARCH_SPAN - 1) if low + SEARCH_SPAN <= exists else "*"
                    criteria = [f"{low}:{high}", "UID", f"{start}:*"]
                    found |= {int(u) for u in self.client.search(criteria)}
        # "n:*" always includes the highest UID, even below n (RFC 3501 6.4.8).
        return {u for u in found if u >= start}

    def _esearch(self, uid_range: str) -> set[int]:
        # A compact set can name billions of UIDs in a few bytes: no more than the folder
        # holds (and what may arrive meanwhile) are taken.
        most = getattr(self, "_exists", 0) + 10_000
        found: set[int] = set()
        for items in self._stream("ESEARCH", "UID", "SEARCH", "RETURN", "(ALL)", "UID", uid_range):
            for item in items:
                text = item if isinstance(item, bytes) else b""
                match = re.search(rb"\bALL\s+([0-9:,]+)", text, re.IGNORECASE)
                if match:
                    try:
                        found |= _sequence_set(match.group(1).decode(), most - len(found))
                    except ResponseTooLong:
                        self.transport.drop()  # left mid-response
                        raise
        return found

    def sizes(self, uids: Iterable[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID (to bound batches by bytes before fetching bodies).

        Read as the answers arrive, keeping only the UIDs asked for."""
        result: dict[int, int] = {}
        for chunk in _chunks(sorted(uids), 1000):
            wanted = set(chunk)
            with _boundary("UID FETCH RFC822.SIZE"):
                for found in self._fetch_stream(_sequence(chunk), ["RFC822.SIZE"]):
                    for uid, data in found.items():
                        if uid in wanted and b"RFC822.SIZE" in data:
                            result[uid] = int(data[b"RFC822.SIZE"])
        return result

    def fetch(
        self,
        uids: list[int],
        max_bytes: int | None = None,
        on_message: Callable[[FetchedMessage], None] | None = None,
    ) -> list[FetchedMessage]:
        """Bodies (BODY.PEEK[], never BODY[]), flags, internal date and size of `uids`.

        Responses are read as they arrive, and each message read whole is handed to
        `on_message` at once (the sync starts parsing it while the rest arrives). A body
        above MAX_MESSAGE_BYTES is never read (the literal is refused when announced,
        whatever RFC822.SIZE said), and the bodies kept
        stop at `max_bytes` (the batch's bound, at least one message's): either way the
        connection is dropped and `BatchAbandoned` says what was read whole and what was not.
        Reconnect (`reconnect()`) and fetch the rest one by one: a single message refused so
        is too large, and is fetched headers-only (`fetch_headers`).
        """
        items = ["BODY.PEEK[]", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
        if self.condstore:
            items.append("MODSEQ")
        budget = max(max_bytes or 0, self.limits.max_message_bytes)
        wanted = set(uids)
        received: dict[int, FetchedMessage] = {}
        kept = 0
        with _boundary("UID FETCH BODY.PEEK[]"):
            try:
                with self.transport.bounds(literal_cap=self.limits.max_message_bytes):
                    for found in self._fetch_stream(_sequence(uids), items):
                        for uid, data in found.items():
                            if uid not in wanted or b"BODY[]" not in data:
                                continue
                            raw = data[b"BODY[]"] or b""
                            message = FetchedMessage(
                                uid=uid,
                                flags=Flags.parse(data.get(b"FLAGS", ())),
                                internal_date=_aware(data.get(b"INTERNALDATE")),
                                size=int(data.get(b"RFC822.SIZE", len(raw))),
                                raw=raw,
                                modseq=_modseq(data),
                            )
                            received[uid] = message
                            kept += len(raw)
                            if kept > budget:
                                self.transport.drop()
                                raise LiteralTooLarge(kept)
                            if on_message is not None:
                                on_message(message)
            except LiteralTooLarge:
                rest = [u for u in uids if u not in received]
                raise BatchAbandoned(list(received.values()), rest) from None
        return list(received.values())

    def fetch_headers(self, uids: list[int]) -> list[FetchedMessage]:
        """The header (at most HEADER_MAX_BYTES of it, a partial fetch), flags, internal date
        and size of `uids`, as messages stored headers-only (`too_large`).

        A server that sends more than it was asked for is cut like a body (`BatchAbandoned`);
        a single message whose header cannot be read is returned with none.
        """
        cap = min(HEADER_MAX_BYTES, self.limits.max_message_bytes)
        items = [f"BODY.PEEK[HEADER]<0.{cap}>", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
        if self.condstore:
            items.append("MODSEQ")
        wanted = set(uids)
        received: dict[int, FetchedMessage] = {}
        with _boundary("UID FETCH BODY.PEEK[HEADER]"):
            try:
                with self.transport.bounds(literal_cap=cap):
                    for found in self._fetch_stream(_sequence(uids), items):
                        for uid, data in found.items():
                            if uid in wanted:
                                received[uid] = _headers_only(uid, data)
            except LiteralTooLarge:
                rest = [u for u in uids if u not in received]
                raise BatchAbandoned(list(received.values()), rest) from None
        return list(received.values())

    def flags(self, uids: list[int] | str, changed_since: int | None = None) -> list[FlagChange]:
        """Flags of `uids` ("1:*" for all); with CONDSTORE, only those changed since a modseq.

        Read as the responses arrive; one entry per UID, and for "1:*" no more entries than
        the folder had messages when examined (plus what arrives meanwhile, within reason).
        """
        items = ["FLAGS"] + (["MODSEQ"] if self.condstore else [])
        modifiers = [f"CHANGEDSINCE {changed_since}"] if changed_since is not None else None
        wanted = None if isinstance(uids, str) else set(uids)
        limit = len(wanted) if wanted is not None else getattr(self, "_exists", 0) + 10_000
        result: dict[int, FlagChange] = {}
        with _boundary("UID FETCH FLAGS"):
            sequence = uids if isinstance(uids, str) else _sequence(uids)
            for found in self._fetch_stream(sequence, items, modifiers):
                for uid, data in found.items():
                    if b"FLAGS" not in data or (wanted is not None and uid not in wanted):
                        continue
                    result[uid] = FlagChange(uid, Flags.parse(data[b"FLAGS"]), _modseq(data))
                    if len(result) > limit:
                        self.transport.drop()
                        raise ResponseTooLong()
        return list(result.values())

    def _fetch_stream(
        self, sequence: str, items: list[str], modifiers: list[str] | None = None
    ) -> Iterator[dict[int, dict[bytes, Any]]]:
        """UID FETCH, parsed one response at a time (imapclient's fetch() keeps every response
        until the command ends, and cannot take "1:*")."""
        args = ["UID", "FETCH", sequence, "(" + " ".join(items) + ")"]
        if modifiers:
            args.append("(" + " ".join(modifiers) + ")")
        for data in self._stream("FETCH", *args):
            found: dict[int, dict[bytes, Any]] = parse_fetch_response(
                data, self.client.normalise_times, True
            )
            yield found

    # Writing back (the user's own changes): flags, moves, deletions.
    def select(self, folder: str) -> FolderStatus:
        """Select `folder` read-write (for STORE, MOVE, EXPUNGE)."""
        return self._select(folder, readonly=False)

    def store(self, uid: int, add: list[bytes], remove: list[bytes]) -> bool:
        """Add and remove flags of one message; False when it no longer exists.

        +FLAGS/-FLAGS name only the flags the user changed, so flags another client set at the
        same time are kept. With CONDSTORE, UNCHANGEDSINCE (RFC 7162 3.1.3) guards against
        writing over a concurrent change of the same flag: on a conflict (MODIFIED) the store
        is retried against the message's new state.
        """
        for _attempt in range(3):
            modseq = None
            if self.condstore:
                current = self.flags([uid])
                if not current:
                    return False
                modseq = current[0].modseq
            elif uid not in self.uids(from_uid=uid):
                return False
            conflicted = False
            for sign, flags in (("+", add), ("-", remove)):
                if not flags:
                    continue
                item = f"{sign}FLAGS.SILENT"
                if modseq is not None:
                    item = f"(UNCHANGEDSINCE {modseq}) {item}"
                names = "(" + " ".join(f.decode() for f in flags) + ")"
                with _boundary("UID STORE"):
                    self.client._imap.untagged_responses.pop("MODIFIED", None)
                    typ, data = self.client._imap.uid("STORE", str(uid), item, names)
                    if typ != "OK":
                        raise MailConnectionError(
                            Category.COMMAND_FAILED,
                            peer_text=f"UID STORE {uid}: {_text(Exception(data))}",
                        )
                    conflicted = bool(self.client._imap.untagged_responses.pop("MODIFIED", None))
                if conflicted:
                    break
            if not conflicted:
                return True
        raise MailConnectionError(f"UID STORE {uid}: kept conflicting with another client")

    def move(self, uid: int, target: str) -> int | None:
        r"""Move one message; return its UID in `target` when the server says (COPYUID), else None.

        UID MOVE (RFC 6851) when advertised, else COPY + \Deleted + UID EXPUNGE (RFC 4315), which
        expunges only this message, never other \Deleted ones.
        """
        imap = self.client._imap
        imap.untagged_responses.pop("COPYUID", None)
        with _boundary("UID MOVE"):
            if self.move_supported:
                self.client.move([uid], target)
            else:
                self.client.copy([uid], target)
                self.client.add_flags([uid], [b"\\Deleted"], silent=True)
                if self.uidplus:
                    self.client.uid_expunge([uid])
        # COPYUID <uidvalidity> <source uids> <target uids>, kept by imaplib as a response code.
        found = imap.untagged_responses.pop("COPYUID", None)
        if not found:
            return None
        try:
            return int(_text(Exception(found[-1])).split()[2])
        except (IndexError, ValueError):
            return None

    def expunge(self, uid: int) -> None:
        r"""Delete one message for good: \Deleted, then UID EXPUNGE of that UID only."""
        with _boundary("UID EXPUNGE"):
            self.client.add_flags([uid], [b"\\Deleted"], silent=True)
            if self.uidplus:
                self.client.uid_expunge([uid])
            else:
                raise MailConnectionError("the server cannot expunge one message (no UIDPLUS)")

    def append(self, folder: str, raw: bytes, flags: list[bytes], when: datetime) -> None:
        """APPEND a message to `folder` (the Sent copy of a message we sent)."""
        with _boundary(f"APPEND {folder}"):
            self.client.append(folder, raw, flags=flags, msg_time=when)

    def create(self, folder: str) -> None:
        with _boundary(f"CREATE {folder}"):
            self.client.create_folder(folder)

    def has_message_id(self, folder: str, message_id: str) -> bool:
        """Whether `folder` holds a message with this Message-ID header (read-only)."""
        with _boundary(f"SEARCH {folder}"):
            self.client.select_folder(folder, readonly=True)
            return bool(self.client.search(["HEADER", "Message-ID", message_id]))

    def append_many(self, folder: str, messages: list[tuple[bytes, list[bytes], datetime]]) -> None:
        """APPEND (raw, flags, internal date) messages to `folder` on this one login: in one
        MULTIAPPEND (RFC 3502: all of them stored, or none) when the server offers it, else
        one APPEND after the other."""
        with _boundary(f"APPEND {folder}"):
            if len(messages) > 1 and self.client.has_capability("MULTIAPPEND"):
                self.client.multiappend(
                    folder,
                    [{"msg": raw, "flags": flags, "date": when} for raw, flags, when in messages],
                )
                return
            for raw, flags, when in messages:
                self.client.append(folder, raw, flags=flags, msg_time=when)

    def message_ids_in(self, folder: str, message_ids: list[str]) -> set[str]:
        """Which of `message_ids` `folder` holds by its Message-ID header: one SEARCH for all
        of them (read-only), then their headers for an exact comparison."""
        if not message_ids:
            return set()
        criteria: list[str] = []
        for position, message_id in enumerate(message_ids):
            if position < len(message_ids) - 1:
                criteria.append("OR")
            criteria += ["HEADER", "Message-ID", message_id]
        with _boundary(f"SEARCH {folder}"):
            self.client.select_folder(folder, readonly=True)
            uids = self.client.search(criteria)
            if not uids:
                return set()
            fetched = self.client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        found = set()
        for data in fetched.values():
            raw = data.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]") or b""
            _, _, value = raw.decode("ascii", "replace").partition(":")
            found.add("".join(value.split()))
        return {message_id for message_id in message_ids if message_id in found}

    # IDLE (RFC 2177): the watcher holds it on INBOX and re-issues it before servers drop it.
    def idle_start(self, folder: str = "INBOX") -> None:
        self._idle_responses = 0
        with _boundary("IDLE"):
            self.client.select_folder(folder, readonly=True)
            self.client.idle()

    def idle_wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s in IDLE; True when the server reported new or removed mail.

        One wake-up reads at most `idle_max_responses` responses and `idle_max_bytes` bytes,
        keeps none of them, and returns: a server flooding us cannot grow memory or hold the
        watcher in here (what it sent beyond waits for the next wake-up). An IDLE that brings
        more than IDLE_FLOOD_FACTOR times `idle_max_responses` responses is a flood, not news:
        the connection is dropped (the watcher reconnects later, backing off).
        """
        imap = self.transport
        changed = False
        with _boundary("IDLE"):
            if not imap.readable(timeout):
                return False
            # What woke us must be whole soon: a wake-up never waits a command's timeout.
            imap._arm(IDLE_READ_SECONDS)
            budget = imap.limits.idle_max_bytes
            for _ in range(imap.limits.idle_max_responses):
                line = imap._get_response() or b""
                self._idle_responses += 1
                for name in ("EXISTS", "EXPUNGE", "RECENT"):
                    changed |= bool(imap.untagged_responses.pop(name, None))
                imap.untagged_responses.clear()
                if b"BYE" in line[:8].upper():
                    raise MailConnectionError("IMAP server closed the connection")
                if imap.response_bytes >= budget or not imap.pending():
                    break
            if self._idle_responses > IDLE_FLOOD_FACTOR * imap.limits.idle_max_responses:
                imap.drop()
                raise ResponseTooLong()
        return changed

    def idle_stop(self) -> None:
        """DONE, then read to IDLE's completion, keeping nothing (at most
        `idle_max_responses` responses before it, or the connection is dropped)."""
        imap = self.transport
        tag = self.client._idle_tag
        with _boundary("IDLE DONE"):
            imap.send(b"DONE\r\n")
            for _ in range(imap.limits.idle_max_responses):
                imap._get_response()
                imap.untagged_responses.clear()
                result: Any = imap.tagged_commands.get(tag)
                if result is not None:
                    del imap.tagged_commands[tag]
                    self.client._idle_tag = None
                    if result[0] != "OK":
                        raise MailConnectionError(
                            Category.COMMAND_FAILED, peer_text=f"IDLE ended with {result[0]!r}"
                        )
                    return
            imap.drop()
            raise ResponseTooLong()


def display_name(remote: str, delimiter: str | None) -> str:
    """The API's name for a folder: "/" as separator, INBOX (case-insensitive) upper-case."""
    parts = remote.split(delimiter) if delimiter else [remote]
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return "/".join(parts)


def _role(name: str, attributes: set[bytes]) -> FolderRole | None:
    if name == "INBOX":
        return FolderRole.INBOX
    for attribute, role in ROLE_ATTRIBUTES.items():
        if attribute in attributes:
            return role
    return ROLE_NAMES.get(name.rsplit("/", 1)[-1].lower())


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _modseq(data: dict[bytes, Any]) -> int | None:
    value = data.get(b"MODSEQ")
    if value is None:
        return None
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _sequence(uids: Iterable[int]) -> str:
    """A UID set in its compact form (runs as ranges): "1:5,9,12:14"."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _sequence_set(text: str, most: int) -> set[int]:
    """The UIDs of a sequence set without "*" ("1:3,7" -> {1, 2, 3, 7}); more than `most`
    of them is not a folder's answer (ResponseTooLong)."""
    found: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            a, b = sorted((int(low), int(high or low)))
            if len(found) + b - a + 1 > most:
                raise ResponseTooLong()
            found.update(range(a, b + 1))
    return found


def _headers_only(uid: int, data: dict[bytes, Any]) -> FetchedMessage:
    """A message stored headers-only, from a partial BODY.PEEK[HEADER] answer."""
    header = b""
    for key, value in data.items():
        if key.startswith(b"BODY[HEADER]") and isinstance(value, bytes):
            header = value
    end = header.find(b"\r\n\r\n")
    if end >= 0:
        header = header[: end + 2]
    elif header:
        # Cut at HEADER_MAX_BYTES: keep whole lines only.
        header = header[: header.rfind(b"\n") + 1]
    return FetchedMessage(
        uid=uid,
        flags=Flags.parse(data.get(b"FLAGS", ())),
        internal_date=_aware(data.get(b"INTERNALDATE")),
        size=int(data.get(b"RFC822.SIZE", 0)),
        raw=header + b"\r\n" if header else b"",
        modseq=_modseq(data),
        too_large=True,
    )


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _close(client: imapclient.IMAPClient) -> None:
    try:
        transport = client._imap
        if isinstance(transport, BoundedIMAP4):
            transport.expire_within(LOGOUT_SECONDS)
        client.logout()
    except Exception:  # the connection may already be gone; nothing to clean up then
        try:
            client.shutdown()
        except Exception:
            pass


def _text(exc: Exception) -> str:
    """An error's text without imaplib's b'...' wrapping (the caller decides whether the
    peer's words may be shown at all; MailError keeps them printable and short)."""
    text = str(exc)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text.strip() or type(exc).__name__
