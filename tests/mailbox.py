"""Test mailboxes on a stack's real Dovecot, shaped over IMAP as another mail client would."""

from __future__ import annotations

import logging
import smtplib
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import imapclient
from sqlalchemy import select

from app.models import Folder, Message
from app.services.accounts import AccountFields, ServerFields, create_account
from app.states import Security

# A small attachment for messages that need one.
PDF = ("a.pdf", "application/pdf", b"%PDF-1.4")


def message(
    subject: str = "Hello",
    body: str = "Hi there.",
    sender: str = "Sender <sender@example.test>",
    to: str = "rcpt@example.test",
    html: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    date: datetime | None = None,
    cc: str | None = None,
) -> bytes:
    """A well-formed message as bytes."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Date"] = format_datetime(date or datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


@dataclass
class Mailbox:
    """One mail user of a stack, and an IMAP client to change their mailbox from outside."""

    host: str
    imap_port: int
    smtp_port: int
    submission_port: int
    email: str
    password: str

    @contextmanager
    def client(self) -> Iterator[imapclient.IMAPClient]:
        client = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=30)
        client.login(self.email, self.password)
        try:
            yield client
        finally:
            client.logout()

    def append(
        self, folder: str, raw: bytes, flags: tuple[bytes, ...] = (), when: datetime | None = None
    ) -> int:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            response = c.append(folder, raw, flags=flags, msg_time=when)
        # "[APPENDUID <uidvalidity> <uid>] ..." (RFC 4315)
        return int(response.split(b"]")[0].split()[-1])

    def fill(self, folder: str, count: int, prefix: str = "msg") -> list[int]:
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            uids = []
            for i in range(count):
                raw = message(
                    subject=f"{prefix} {i}",
                    body=f"body {i}\n" * 20,
                    date=start + timedelta(minutes=i),
                )
                response = c.append(folder, raw)
                uids.append(int(response.split(b"]")[0].split()[-1]))
        return uids

    def uids(self, folder: str) -> set[int]:
        with self.client() as c:
            c.select_folder(folder, readonly=True)
            return set(c.search("ALL"))

    def flags(self, folder: str) -> dict[int, set[bytes]]:
        with self.client() as c:
            c.select_folder(folder, readonly=True)
            return {uid: set(f) for uid, f in c.get_flags(c.search("ALL")).items()}

    def uidvalidity(self, folder: str) -> int:
        with self.client() as c:
            return c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]

    def deliver(self, raw: bytes) -> None:
        """Deliver through the stack's Postfix (port-25 listener), then LMTP to Dovecot."""
        with smtplib.SMTP(self.host, self.smtp_port, timeout=30) as smtp:
            smtp.sendmail("outside@example.test", [self.email], raw)


def mailbox_of(info, email: str) -> Mailbox:
    return Mailbox(
        info.host, info.imap_port, info.smtp_port, info.submission_port, email, info.users[email]
    )


class UserPool:
    """Fresh mail users, created in bulk (each creation reloads Dovecot's and Postfix's maps)."""

    def __init__(self, stack_control, size: int = 30) -> None:
        self.stack = stack_control
        self.size = size
        self.free: list[str] = []

    def take(self) -> Mailbox:
        if not self.free:
            users = {f"u{uuid.uuid4().hex[:10]}@example.test": None for _ in range(self.size)}
            self.stack.add_users(users)
            self.free = list(users)
        return mailbox_of(self.stack.info, self.free.pop())


class WireLog(logging.Handler):
    """The IMAP commands this process sent while active (imapclient's protocol log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sent: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("> "):
            self.sent.append(text)

    def fetched_bodies(self) -> list[str]:
        return [line for line in self.sent if "BODY.PEEK[]" in line or "BODY[]" in line]


@contextmanager
def wire_log() -> Iterator[WireLog]:
    logger = logging.getLogger("imapclient.imaplib")
    handler = WireLog()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def add_account(
    ctx,
    tenant_id: int,
    mailbox,
    *,
    display_name: str | None = None,
    smtp: ServerFields | None = None,
) -> int:
    """An account for `mailbox` (IMAP in plain text over loopback), made through the service."""
    imap = ServerFields(
        mailbox.host, mailbox.imap_port, Security.NONE, mailbox.email, mailbox.password
    )
    smtp = smtp or ServerFields(
        mailbox.host, mailbox.submission_port, Security.STARTTLS, mailbox.email, mailbox.password
    )
    with ctx.work(tenant_id) as unit:
        fields = AccountFields(mailbox.email, display_name, imap, smtp)
        return create_account(unit, fields, verify=False).id


def stored(sessionmaker, account_id: int) -> dict[str, dict[int, Message]]:
    """The current copies per folder name: {folder: {uid: Message}}."""
    with sessionmaker() as session:
        folders = session.scalars(select(Folder).where(Folder.account_id == account_id)).all()
        result = {}
        for folder in folders:
            rows = session.scalars(
                select(Message).where(
                    Message.folder_id == folder.id, Message.uidvalidity == folder.uidvalidity
                )
            ).all()
            result[folder.name] = {m.uid: m for m in rows}
        return result
