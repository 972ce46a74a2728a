"""Synced mail: folders with their sync state, message copies, and raw bytes.

A message row is one copy in one folder, identified by (folder, uidvalidity, uid) (RFC 3501
2.3.1.1); the raw bytes live once per account, keyed by SHA-256, so a message moved between
folders or refetched after a UIDVALIDITY change is not stored twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import enum_column
from app.states import ChangeKind, ChangeState, FolderRole
from app.tenancy import TenantScoped

# What full-text search matches (migration 0005 says why each part is weighted and cut so).
# PostgreSQL has it as message_search_vector(subject, from_name, from_email, recipients,
# text_body) (migration 0011); kept here as the reference the tests compare that with.
SEARCH_CONFIG = "mail_search"
SEARCH_VECTOR = f"""
setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, left(coalesce(subject, ''), 1000)), 'A')
|| setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig,
    left(coalesce(from_name, ''), 1000) || ' ' || left(coalesce(from_email, ''), 1000) || ' '
    || translate(left(coalesce(from_email, ''), 1000), '@.', '  ') || ' '
    || left(coalesce(recipients, ''), 8000) || ' '
    || translate(left(coalesce(recipients, ''), 8000), '@.<>', '    ')), 'B')
|| setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, left(coalesce(text_body, ''), 65536)), 'C')
"""


class Folder(TenantScoped, Base):
    __tablename__ = "folders"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # Decoded, "/" as separator whatever the server's delimiter; INBOX upper-case.
    name: Mapped[str] = mapped_column(Text)
    # As the server names it (decoded from modified UTF-7), for SELECT and STATUS.
    remote_name: Mapped[str] = mapped_column(Text)
    delimiter: Mapped[str | None] = mapped_column(String(4))
    role: Mapped[FolderRole | None] = enum_column(FolderRole, 16)
    # Sync state, advanced only in the transaction that stored what it stands for.
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    last_flag_scan_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # UIDVALIDITY changes seen recently, to stop a server that resets it on every visit.
    uidvalidity_resets: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    messages_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    unread_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class MessageRaw(TenantScoped, Base):
    __tablename__ = "message_raws"
    __table_args__ = (UniqueConstraint("account_id", "sha256"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Message(TenantScoped, Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("folder_id", "uidvalidity", "uid"),
        # The raw GC looks for raws no message references.
        Index("ix_messages_raw_id", "raw_id"),
        # Search (migration 0005 explains each with its plan).
        Index("ix_messages_search", "tenant_id", "search_vector", postgresql_using="gin"),
        # What the indexing job has left to do (migration 0011).
        Index(
            "ix_messages_unindexed",
            "account_id",
            "id",
            postgresql_where=text("search_vector IS NULL"),
        ),
        Index("ix_messages_tenant_date", "tenant_id", text("date DESC"), text("id DESC")),
        Index("ix_messages_folder_date", "folder_id", text("date DESC"), text("id DESC")),
        Index(
            "ix_messages_addresses_trgm",
            "tenant_id",
            "from_name",
            "from_email",
            "recipients",
            postgresql_using="gin",
            postgresql_ops={c: "gin_trgm_ops" for c in ("from_name", "from_email", "recipients")},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int | None] = mapped_column(BigInteger)
    seen: Mapped[bool] = mapped_column(Boolean, default=False)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    answered: Mapped[bool] = mapped_column(Boolean, default=False)
    draft: Mapped[bool] = mapped_column(Boolean, default=False)
    # Other flags and keywords, as the server sent them.
    keywords: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    internal_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(Integer)
    raw_id: Mapped[int] = mapped_column(ForeignKey("message_raws.id"))
    # Parsed: the Date header, or the internal date when it is missing or broken.
    date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    subject: Mapped[str | None] = mapped_column(Text)
    from_name: Mapped[str | None] = mapped_column(Text)
    from_email: Mapped[str | None] = mapped_column(Text)
    # [{"name": ..., "email": ...}, ...]
    to_addrs: Mapped[list[dict[str, str | None]]] = mapped_column(JSONB, default=list)
    cc_addrs: Mapped[list[dict[str, str | None]]] = mapped_column(JSONB, default=list)
    bcc_addrs: Mapped[list[dict[str, str | None]]] = mapped_column(JSONB, default=list)
    # "Name <addr>, addr, ..." over to, cc and bcc, for search (`to:` and words).
    recipients: Mapped[str | None] = mapped_column(Text)
    reply_to: Mapped[list[dict[str, str | None]]] = mapped_column(JSONB, default=list)
    message_id_header: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    headers: Mapped[list[list[str]]] = mapped_column(JSONB, default=list)
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    has_attachments: Mapped[bool] = mapped_column(Boolean, default=False)
    parse_error: Mapped[str | None] = mapped_column(Text)
    # Stored headers-only (the raw bytes are the header): above MAX_MESSAGE_BYTES, or synced
    # while the tenant was over its storage quota. The body was never read.
    too_large: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    over_quota: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # message_search_vector(...) of the row (migration 0011): a trigger fills it on INSERT
    # and recomputes it when an UPDATE changes what it is made of, except in a transaction
    # that defers it (the sync's batches: app.services.indexing fills those afterwards).
    # NULL: not searchable by words yet. Deferred: only search reads it, inside SQL.
    search_vector: Mapped[str | None] = mapped_column(TSVECTOR, deferred=True)


class MessageChange(TenantScoped, Base):
    """A change a user asked for (flags, move, delete), until a worker applies it over IMAP.

    Flag changes are shown at once (the message row is updated with the request); while one is
    pending the sync leaves that message's flags alone, so the change is never undone before
    the server has it.
    """

    __tablename__ = "message_changes"
    __table_args__ = (Index("ix_message_changes_account_state", "account_id", "state", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # Kept when its message row goes (moved, deleted, expunged by another client): the record
    # of what was asked and done outlives the copy it was about.
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[ChangeKind] = enum_column(ChangeKind, 8)
    seen: Mapped[bool | None] = mapped_column(Boolean)
    flagged: Mapped[bool | None] = mapped_column(Boolean)
    target_folder_id: Mapped[int | None] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE")
    )
    state: Mapped[ChangeState] = enum_column(ChangeState, 8, ChangeState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
