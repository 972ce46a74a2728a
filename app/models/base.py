"""Column helpers shared by the models."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import DateTime, Enum, func
from sqlalchemy.orm import Mapped, MappedColumn, mapped_column

E = TypeVar("E", bound=StrEnum)


class Timestamps:
    """created_at / updated_at; services set updated_at when the user changes the row.

    Not an `onupdate`: bookkeeping written by workers (sync progress, errors) is not a change
    the user made, and watchers key on updated_at to notice new settings.
    """

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def _values(enum: type[StrEnum]) -> list[str]:
    return [member.value for member in enum]


def enum_column(
    enum: type[E], length: int, default: E | None = None, **options: Any
) -> MappedColumn[Any]:
    """A VARCHAR column holding one of `enum`'s values, loaded as its members.

    The column's CHECK constraint is declared in the table's arguments (`app.states.check_in`),
    named as the migrations named it.
    """
    return mapped_column(
        Enum(
            enum,
            native_enum=False,
            create_constraint=False,
            length=length,
            values_callable=_values,
            # Writes are checked by the CHECK constraints; comparing with any text (a folder
            # name that may be a role, say) must not raise.
            validate_strings=False,
        ),
        default=default,
        server_default=default.value if default is not None else None,
        **options,
    )
