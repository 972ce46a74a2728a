"""Tenants and their users."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.tenancy import TenantScoped


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class User(TenantScoped, Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "username"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150))
    # argon2id: salted, slow, self-describing (parameters are in the string).
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TenantUsage(Base):
    """A tenant's stored bytes, as a running total kept by triggers (migration 0009).

    PostgreSQL itself adds and subtracts in the transaction that stores or removes a raw
    message, a draft or an outbox entry (cascades included), so the total is never a scan and
    never drifts from what is stored. What counts: each raw message once (uncompressed), each
    draft's size (bodies and attachments), each outbox entry's MIME bytes. Read it with
    app.services.usage; a tenant without a row has stored nothing yet.
    """

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    storage_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
