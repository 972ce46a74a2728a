"""Drafts and the outbox: what a user writes, and each attempt to deliver it exactly once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, deferred, mapped_column

from app.db import Base
from app.models.base import Timestamps, enum_column
from app.states import DraftState, OutboxState, SentCopy, check_in
from app.tenancy import TenantScoped


class Draft(TenantScoped, Timestamps, Base):
    __tablename__ = "drafts"
    __table_args__ = (CheckConstraint(check_in("state", DraftState), name="state"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # Addresses as the user gave them, normalised ("Name <addr>" or "addr").
    to_addrs: Mapped[list[str]] = mapped_column(JSONB, default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(JSONB, default=list)
    bcc_addrs: Mapped[list[str]] = mapped_column(JSONB, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    # The synced message this replies to; its Message-ID and References are copied when the
    # draft is written, so threading survives that message being moved or deleted.
    in_reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    in_reply_to_header: Mapped[str | None] = mapped_column(Text)
    references_header: Mapped[str | None] = mapped_column(Text)
    # [{"filename", "content_type", "size"}], in order; the bytes are in draft_attachments.
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # bodies + attachment bytes
    version: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[DraftState] = enum_column(DraftState, 8, DraftState.DRAFT)


class DraftAttachment(TenantScoped, Base):
    __tablename__ = "draft_attachments"

    draft_id: Mapped[int] = mapped_column(
        ForeignKey("drafts.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class OutboxEntry(TenantScoped, Base):
    """One message to deliver: built once, sent at most once unless the user says otherwise."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(check_in("state", OutboxState), name="state"),
        CheckConstraint(check_in("sent_copy", SentCopy), name="sent_copy"),
        # The same key from the same tenant names the same entry (expired keys are cleared).
        Index("ux_outbox_idempotency", "tenant_id", "idempotency_key", unique=True),
        Index("ix_outbox_tenant_state", "tenant_id", "state", "id"),
        # What the sweeper looks at: entries due (queued) or in flight (sending).
        Index(
            "ix_outbox_active",
            "state",
            "next_attempt_at",
            postgresql_where="state IN ('queued', 'sending')",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # A draft is sent once: its one entry (retries and "retry" resolutions reuse it).
    draft_id: Mapped[int | None] = mapped_column(
        ForeignKey("drafts.id", ondelete="SET NULL"), unique=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[OutboxState] = enum_column(OutboxState, 10, OutboxState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(Text)  # the Message-ID header, <...>
    envelope_from: Mapped[str] = mapped_column(Text)
    recipients: Mapped[list[str]] = mapped_column(JSONB)  # envelope: to + cc + bcc addresses
    # The message exactly as it is sent, built once (the same bytes on every attempt).
    mime: Mapped[bytes] = deferred(mapped_column(LargeBinary))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set (and committed) just before the final "." of DATA goes out: an entry found
    # `sending` without it was never complete on the wire, so sending it again is safe;
    # with it, the server may have the message: `uncertain`.
    dot_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    smtp_reply: Mapped[str | None] = mapped_column(Text)  # the server's reply to the final "."
    # The copy APPENDed to the Sent folder after `sent`: none until then.
    sent_copy: Mapped[SentCopy] = enum_column(SentCopy, 8, SentCopy.NONE)
    sent_copy_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sent_copy_error: Mapped[str | None] = mapped_column(Text)
    resolved_by: Mapped[str | None] = mapped_column(String(8))  # "user" when settled by hand
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
