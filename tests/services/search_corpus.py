"""Mail for the search tests, stored the way the sync stores it (parse_message, _message_row)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from app.mail import ServerSettings
from app.mail.imap import FetchedMessage, Flags
from app.models import Folder, Message, MessageRaw
from app.secrets import SecretBox
from app.services.accounts import AccountFields, create_account
from app.services.search import search
from app.services.sync import _FolderState, _message_row
from app.tenancy import bind_tenant


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def mail(
    subject: str = "Hello",
    body: str = "Hi there.",
    sender: str = "Sender <sender@example.test>",
    to: str = "rcpt@example.test",
    cc: str | None = None,
    date: datetime | None = None,
    attachment: bool = False,
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
    if attachment:
        msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="a.pdf")
    return msg.as_bytes()


class Mailboxes:
    """Accounts, folders and messages of one tenant, written straight into the database."""

    def __init__(self, sessions: sessionmaker[Session], env: dict[str, str], tenant_id: int):
        self.sessions = sessions
        self.box = SecretBox(tuple(env["ENCRYPTION_KEY"].split(",")))
        self.tenant_id = tenant_id
        self.uids: dict[int, int] = {}

    def account(self, email: str) -> int:
        server = ServerSettings("127.0.0.1", 1, "none", email, "secret")
        with self.sessions() as session:
            bind_tenant(session, self.tenant_id)
            account = create_account(
                session,
                self.box,
                AccountFields(email, None, server, server),
                verify=False,
                ca_file=None,
            )
            session.commit()
            return account.id

    def folder(self, account_id: int, name: str, role: str | None = None, validity: int = 7) -> int:
        with self.sessions() as session:
            bind_tenant(session, self.tenant_id)
            folder = Folder(
                account_id=account_id, name=name, remote_name=name, role=role, uidvalidity=validity
            )
            session.add(folder)
            session.commit()
            return folder.id

    def store(
        self,
        folder_id: int,
        raw: bytes,
        *,
        seen: bool = True,
        flagged: bool = False,
        validity: int | None = None,
    ) -> int:
        """Store `raw` in the folder as the sync would; the new message's id."""
        with self.sessions.begin() as session:
            folder = session.get(Folder, folder_id)
            uid = self.uids[folder_id] = self.uids.get(folder_id, 0) + 1
            stored = MessageRaw(
                account_id=folder.account_id,
                sha256=hashlib.sha256(raw).digest(),
                data=raw,
                tenant_id=folder.tenant_id,
            )
            session.add(stored)
            session.flush()
            fetched = FetchedMessage(
                uid, Flags(seen, flagged, False, False, ()), utc(2020, 1, 1), len(raw), raw, None
            )
            row = _message_row(
                _FolderState.of(folder), validity or folder.uidvalidity, fetched, stored.id
            )
            return session.execute(insert(Message).values(row).returning(Message.id)).scalar_one()

    def search(self, query: str, **options):
        """search() as the tenant's API requests run it."""
        with self.sessions() as session:
            bind_tenant(session, self.tenant_id)
            return search(session, query, **options)
