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
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import imapclient
from imapclient import imap4, tls
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.response_parser import parse_fetch_response

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

TIMEOUT_SECONDS = 60
# Servers send long lines (big FLAGS lists, long UID sets); imaplib's default 10 000 bytes
# would abort the connection.
imaplib._MAXLINE = 10_000_000  # type: ignore[attr-defined]  # private: typeshed omits it

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
class RemoteFolder:
    name: str  # decoded, "/" as separator, INBOX upper-case
    remote_name: str  # as the server names it (decoded from modified UTF-7)
    delimiter: str | None
    role: FolderRole | None


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int | None
    messages: int
    highestmodseq: int | None


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
    raw: bytes
    modseq: int | None


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


class _DeadlineGuard:
    """Shuts a connection's socket at its deadline: no wait of the IMAP reader outlives it,
    not even against a server that drips a byte every few seconds (each wait alone would be
    within the socket's timeout)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> None:
        self._timer = threading.Timer(
            max(self.deadline - time.monotonic(), 0), self._fire, args=(sock,)
        )
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, sock: socket.socket) -> None:
        self.fired = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _open_socket(
    address: str, port: int, timeout: float | None, guard: _DeadlineGuard | None
) -> socket.socket:
    sock = socket.create_connection((address, port), timeout)
    if guard is not None:
        guard.watch(sock)
    return sock


class _PlainTransport(imap4.IMAP4WithTimeout):  # type: ignore[misc]  # untyped library
    """imapclient's plain transport, connecting to the checked address; `host` stays the
    tenant's name, which STARTTLS verifies."""

    def __init__(
        self,
        address: str,
        host: str,
        port: int,
        timeout: float | None,
        guard: _DeadlineGuard | None,
    ) -> None:
        self.address, self.guard = address, guard
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        timeout = timeout if timeout is not None else self._timeout
        return _open_socket(self.address, self.port, timeout, self.guard)


class _TlsTransport(tls.IMAP4_TLS):  # type: ignore[misc]  # untyped library
    """imapclient's implicit-TLS transport, connecting to the checked address and verifying
    the tenant's name."""

    def __init__(
        self,
        address: str,
        host: str,
        port: int,
        context: ssl.SSLContext,
        timeout: float | None,
        guard: _DeadlineGuard | None,
    ) -> None:
        self.address, self.guard = address, guard
        super().__init__(host, port, context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        timeout = timeout if timeout is not None else self._timeout
        sock = _open_socket(self.address, self.port, timeout, self.guard)
        try:
            wrapped: socket.socket = tls.wrap_socket(sock, self.ssl_context, self.host)
            return wrapped
        except BaseException:
            sock.close()
            raise


class _Client(imapclient.IMAPClient):  # type: ignore[misc]  # untyped library
    """IMAPClient whose connection goes to `address` (the checked one) while TLS, implicit
    or STARTTLS, verifies `host`."""

    def __init__(
        self, address: str, host: str, guard: _DeadlineGuard | None, **kwargs: Any
    ) -> None:
        self._address, self._guard = address, guard
        super().__init__(host, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _TlsTransport(
                self._address, self.host, self.port, self.ssl_context, timeout, self._guard
            )
        return _PlainTransport(self._address, self.host, self.port, timeout, self._guard)


def connect(
    server: ServerSettings, ca_file: str | None = None, *, deadline: float | None = None
) -> imapclient.IMAPClient:
    """A logged-in client; `security` chooses implicit TLS, STARTTLS or (allowed private
    servers only) none. With a `deadline` (time.monotonic()), nothing waits past it: every
    socket wait is bounded by what is left, and the socket is shut at the deadline (the
    caller ends the guard with `release()`)."""
    # Built (and cached) only when used: loading the CA store costs milliseconds.
    context = tls_context(ca_file) if server.security != "none" else None
    timeout: float = TIMEOUT_SECONDS
    guard = None
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise failure(MailConnectionError, Category.TIMED_OUT, "no time left to connect")
        guard = _DeadlineGuard(deadline)
    try:
        with _boundary(f"connection to {server.host}:{server.port}", greeted=False):
            client = _Client(
                server.address or server.host,
                server.host,
                guard,
                port=server.port,
                ssl=server.security == "ssl",
                ssl_context=context if server.security == "ssl" else None,
                timeout=timeout,
            )
        try:
            # The step's name is what a tenant may read with the server's words: no address.
            if server.security == "starttls":
                try:
                    with _boundary("STARTTLS"):
                        _remaining(client, deadline)
                        client.starttls(context)
                except MailConnectionError as exc:
                    # Refused or not offered: no TLS, so no login (never a fallback).
                    if exc.category in (Category.PROTOCOL_ERROR, Category.COMMAND_FAILED):
                        raise failure(MailConnectionError, Category.TLS_FAILED, exc) from None
                    raise
            with _boundary("LOGIN"):
                _remaining(client, deadline)
                client.login(server.username, server.password)
        except MailError:
            _close(client)
            raise
    except MailError as exc:
        if guard is not None:
            guard.cancel()
            if guard.fired and not isinstance(exc, MailAuthError):
                raise failure(MailConnectionError, Category.TIMED_OUT, exc) from None
        raise
    # Aware datetimes for INTERNALDATE, not local-time naive ones.
    client.normalise_times = False
    return client


def release(client: imapclient.IMAPClient) -> None:
    """End the deadline guard of a client made with one (connect's `deadline`)."""
    guard = getattr(client, "_guard", None)
    if guard is not None:
        guard.cancel()


def _remaining(client: imapclient.IMAPClient, deadline: float | None) -> None:
    """Let the next waits of `client` last at most until `deadline`."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("deadline reached")
    client.socket().settimeout(left)


def check_login(
    server: ServerSettings, ca_file: str | None = None, *, deadline: float | None = None
) -> None:
    """Log in and out; raise MailAuthError or MailConnectionError on failure."""
    client = connect(server, ca_file, deadline=deadline)
    try:
        if deadline is not None and deadline - time.monotonic() <= 0:
            client.shutdown()  # logged in; a LOGOUT could wait on the server again
            return
        if deadline is not None:
            client.socket().settimeout(deadline - time.monotonic())
        _close(client)
    finally:
        release(client)


class ImapSession:
    """One logged-in connection, with the operations the sync needs."""

    def __init__(self, client: imapclient.IMAPClient) -> None:
        self.client = client
        with _boundary("CAPABILITY"):
            caps = {c.upper() for c in client.capabilities()}
        self.condstore = b"CONDSTORE" in caps or b"QRESYNC" in caps
        self.idle_supported = b"IDLE" in caps
        self.move_supported = b"MOVE" in caps
        self.uidplus = b"UIDPLUS" in caps
        if self.condstore:
            with _boundary("ENABLE CONDSTORE"):
                client.enable("CONDSTORE")

    @classmethod
    def open(cls, server: ServerSettings, ca_file: str | None = None) -> ImapSession:
        return cls(connect(server, ca_file))

    def close(self) -> None:
        _close(self.client)

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def folders(self) -> list[RemoteFolder]:
        """Every selectable folder, with its role (RFC 6154) and decoded name."""
        with _boundary("LIST"):
            listed = self.client.list_folders()
        result = []
        for attributes, delimiter, remote in listed:
            attrs = {a.lower() for a in attributes}
            if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
                continue
            delim = delimiter.decode() if isinstance(delimiter, bytes) else delimiter
            name = display_name(remote, delim)
            result.append(RemoteFolder(name, remote, delim, _role(name, attrs)))
        return result

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
            except IMAPClientError as exc:  # a NO or BAD answer for this folder
                raise FolderGone(f"STATUS {folder}: {_text(exc)}") from None
        return FolderStatus(
            uidvalidity=int(found[b"UIDVALIDITY"]),
            uidnext=int(found[b"UIDNEXT"]) if b"UIDNEXT" in found else None,
            messages=int(found[b"MESSAGES"]),
            highestmodseq=int(found[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in found else None,
        )

    def examine(self, folder: str) -> FolderStatus:
        """Select `folder` read-only (EXAMINE)."""
        return self._select(folder, readonly=True)

    def _select(self, folder: str, readonly: bool) -> FolderStatus:
        command = "EXAMINE" if readonly else "SELECT"
        with _boundary(f"{command} {folder}"):
            try:
                found = self.client.select_folder(folder, readonly=readonly)
            except imaplib.IMAP4.abort:
                raise
            except IMAPClientError as exc:
                raise FolderGone(f"{command} {folder}: {_text(exc)}") from None
        return FolderStatus(
            uidvalidity=int(found[b"UIDVALIDITY"]),
            uidnext=int(found[b"UIDNEXT"]) if b"UIDNEXT" in found else None,
            messages=int(found[b"EXISTS"]),
            highestmodseq=int(found[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in found else None,
        )

    def uids(self, from_uid: int | None = None) -> set[int]:
        """UIDs in the selected folder, all or those >= from_uid."""
        criteria = ["UID", f"{from_uid}:*"] if from_uid else ["ALL"]
        with _boundary("UID SEARCH"):
            found = self.client.search(criteria)
        uids = {int(u) for u in found}
        # "n:*" always includes the highest UID, even below n (RFC 3501 6.4.8).
        return {u for u in uids if u >= from_uid} if from_uid else uids

    def sizes(self, uids: Iterable[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID (to bound batches by bytes before fetching bodies)."""
        result: dict[int, int] = {}
        for chunk in _chunks(sorted(uids), 1000):
            with _boundary("UID FETCH RFC822.SIZE"):
                found = self.client.fetch(chunk, [b"RFC822.SIZE"])
            for uid, data in found.items():
                if uid in chunk and b"RFC822.SIZE" in data:
                    result[uid] = int(data[b"RFC822.SIZE"])
        return result

    def fetch(self, uids: list[int]) -> list[FetchedMessage]:
        """Bodies (BODY.PEEK[], never BODY[]), flags, internal date and size of `uids`."""
        items = [b"BODY.PEEK[]", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"]
        if self.condstore:
            items.append(b"MODSEQ")
        with _boundary("UID FETCH BODY.PEEK[]"):
            found = self.client.fetch(uids, items)
        wanted = set(uids)
        result = []
        for uid, data in found.items():
            if uid not in wanted or b"BODY[]" not in data:
                continue
            raw = data[b"BODY[]"] or b""
            result.append(
                FetchedMessage(
                    uid=uid,
                    flags=Flags.parse(data.get(b"FLAGS", ())),
                    internal_date=_aware(data.get(b"INTERNALDATE")),
                    size=int(data.get(b"RFC822.SIZE", len(raw))),
                    raw=raw,
                    modseq=_modseq(data),
                )
            )
        return result

    def flags(self, uids: list[int] | str, changed_since: int | None = None) -> list[FlagChange]:
        """Flags of `uids` ("1:*" for all); with CONDSTORE, only those changed since a modseq."""
        items = [b"FLAGS"] + ([b"MODSEQ"] if self.condstore else [])
        modifiers = [f"CHANGEDSINCE {changed_since}"] if changed_since is not None else None
        with _boundary("UID FETCH FLAGS"):
            if isinstance(uids, str):
                found = self._fetch_range(uids, items, modifiers)
            else:
                found = self.client.fetch(uids, items, modifiers=modifiers)
        return [
            FlagChange(uid, Flags.parse(data.get(b"FLAGS", ())), _modseq(data))
            for uid, data in found.items()
            if b"FLAGS" in data
        ]

    def _fetch_range(
        self, uid_range: str, items: list[bytes], modifiers: list[str] | None
    ) -> dict[int, dict[bytes, Any]]:
        # imapclient's fetch() keeps only the responses whose ids it was given as a list, so
        # it cannot take "1:*"; listing every UID instead would overrun servers' line limits
        # (Dovecot: 64 KiB). This is fetch() without that filter, on imaplib's own calls.
        args = ["UID", "FETCH", uid_range, "(" + " ".join(i.decode() for i in items) + ")"]
        if modifiers:
            args.append("(" + " ".join(modifiers) + ")")
        imap = self.client._imap
        tag = imap._command(*args)
        typ, data = imap._command_complete("FETCH", tag)
        if typ != "OK":
            raise MailConnectionError(f"UID FETCH {uid_range}: {data!r}")
        typ, data = imap._untagged_response(typ, data, "FETCH")
        found: dict[int, dict[bytes, Any]] = parse_fetch_response(
            data, self.client.normalise_times, True
        )
        return found

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
                        raise MailConnectionError(f"UID STORE {uid}: {_text(Exception(data))}")
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

    # IDLE (RFC 2177): the watcher holds it on INBOX and re-issues it before servers drop it.
    def idle_start(self, folder: str = "INBOX") -> None:
        with _boundary("IDLE"):
            self.client.select_folder(folder, readonly=True)
            self.client.idle()

    def idle_wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s in IDLE; True when the server reported new or removed mail."""
        with _boundary("IDLE"):
            responses = self.client.idle_check(timeout=timeout)
        return any(len(r) > 1 and r[1] in (b"EXISTS", b"EXPUNGE", b"RECENT") for r in responses)

    def idle_stop(self) -> None:
        with _boundary("IDLE DONE"):
            self.client.idle_done()


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


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _close(client: imapclient.IMAPClient) -> None:
    try:
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
