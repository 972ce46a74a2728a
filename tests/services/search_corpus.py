"""Mail for the search tests, stored the way the sync stores it (message_row)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from sqlalchemy import insert

from app.context import ServiceContext
from app.mail.imap import FetchedMessage, Flags
from app.models import Account, Folder, Message, MessageRaw
from app.services import indexing
from app.services.search import search
from app.services.sync.rows import FolderState, message_row
from app.states import Security


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


class Mailboxes:
    """Accounts, folders and messages of one tenant, written straight into the database."""

    def __init__(self, ctx: ServiceContext, tenant_id: int):
        self.ctx = ctx
        self.sessions = ctx.sessions
        self.tenant_id = tenant_id
        self.uids: dict[int, int] = {}

    def account(self, email: str) -> int:
        """An account row no one ever connects to (written as it is stored, bypassing the
        host policy, which refuses its dead loopback port as it must)."""
        secret = self.ctx.secrets.encrypt("secret")
        server = {"host": "127.0.0.1", "port": 1, "security": Security.NONE, "username": email}
        with self.ctx.work(self.tenant_id) as unit:
            account = Account(email=email, display_name=None)
            for kind in ("imap", "smtp"):
                for name, value in server.items():
                    setattr(account, f"{kind}_{name}", value)
                setattr(account, f"{kind}_password_encrypted", secret)
            unit.session.add(account)
            unit.commit()
            return account.id

    def folder(self, account_id: int, name: str, role: str | None = None, validity: int = 7) -> int:
        with self.ctx.work(self.tenant_id) as unit:
            folder = Folder(
                account_id=account_id, name=name, remote_name=name, role=role, uidvalidity=validity
            )
            unit.session.add(folder)
            unit.commit()
            return folder.id

    def store(
        self,
        folder_id: int,
        raw: bytes,
        *,
        seen: bool = True,
        flagged: bool = False,
        validity: int | None = None,
        deferred: bool = False,
    ) -> int:
        """Store `raw` in the folder as the sync would; the new message's id. `deferred`: as a
        sync that defers the search vector to the indexing job stores it."""
        with self.sessions.begin() as session:
            if deferred:
                indexing.defer_search(session)
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
            row = message_row(
                FolderState.of(folder), validity or folder.uidvalidity, fetched, stored.id
            )
            return session.execute(insert(Message).values(row).returning(Message.id)).scalar_one()

    def search(self, query: str, **options):
        """search() as the tenant's API requests run it."""
        with self.ctx.work(self.tenant_id) as unit:
            return search(unit, query, **options)
