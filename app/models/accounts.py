"""Mail accounts: IMAP and SMTP settings with encrypted passwords."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import Timestamps, enum_column
from app.states import AccountState, Security, check_in
from app.tenancy import TenantScoped


class Account(TenantScoped, Timestamps, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(check_in("imap_security", Security), name="imap_security"),
        CheckConstraint(check_in("smtp_security", Security), name="smtp_security"),
        CheckConstraint(check_in("state", AccountState), name="state"),
    )

    # Ids in URLs are BIGINT everywhere, matching the URL converter's range (app.api.ids).
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    imap_host: Mapped[str] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(Integer)
    imap_security: Mapped[Security] = enum_column(Security, 8)
    imap_username: Mapped[str] = mapped_column(String(320))
    # Fernet tokens (AES-CBC + HMAC-SHA256) under ENCRYPTION_KEY; never the plain password.
    imap_password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    smtp_host: Mapped[str] = mapped_column(String(255))
    smtp_port: Mapped[int] = mapped_column(Integer)
    smtp_security: Mapped[Security] = enum_column(Security, 8)
    smtp_username: Mapped[str] = mapped_column(String(320))
    smtp_password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[AccountState] = enum_column(AccountState, 16, AccountState.ACTIVE)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Sync bookkeeping. Whether a sync is running is not stored: it is whether the account's
    # advisory lock is held (app.services.sync), which a killed worker cannot leave behind.
    sync_job_id: Mapped[str | None] = mapped_column(String(64))
    sync_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sync_folders_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sync_folders_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sync_messages_synced: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sync_messages_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
