"""Mail accounts: IMAP and SMTP settings with encrypted passwords."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.base import Timestamps
from app.tenancy import TenantScoped

SECURITY = ("ssl", "starttls", "none")
STATES = ("active", "auth_failed", "disabled")


class Account(TenantScoped, Timestamps, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(f"imap_security IN {SECURITY}", name="imap_security"),
        CheckConstraint(f"smtp_security IN {SECURITY}", name="smtp_security"),
        CheckConstraint(f"state IN {STATES}", name="state"),
    )

    # Ids in URLs are BIGINT everywhere, matching the URL converter's range (app.api.ids).
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str | None] = mapped_column(String(200))
    imap_host: Mapped[str] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(Integer)
    imap_security: Mapped[str] = mapped_column(String(8))
    imap_username: Mapped[str] = mapped_column(String(320))
    # Fernet tokens (AES-CBC + HMAC-SHA256) under ENCRYPTION_KEY; never the plain password.
    imap_password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    smtp_host: Mapped[str] = mapped_column(String(255))
    smtp_port: Mapped[int] = mapped_column(Integer)
    smtp_security: Mapped[str] = mapped_column(String(8))
    smtp_username: Mapped[str] = mapped_column(String(320))
    smtp_password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
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
