"""Column helpers shared by the models."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, func
from sqlalchemy.orm import Mapped, mapped_column


class Timestamps:
    """created_at / updated_at; services set updated_at when the user changes the row.

    Not an `onupdate`: bookkeeping written by workers (sync progress, errors) is not a change
    the user made, and watchers key on updated_at to notice new settings.
    """

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
