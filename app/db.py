"""The engine and sessions; a session is opened at the edge (app.context) and passed down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every model; its metadata is what Alembic compares against."""


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine that connects lazily, so the service starts while PostgreSQL is down."""
    return create_engine(
        database_url,
        # A connection dropped by a PostgreSQL restart is detected and replaced, so the
        # service recovers by itself.
        pool_pre_ping=True,
        connect_args={"connect_timeout": 3, "application_name": "emailservice"},
        **kwargs,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (views serialise after it)."""
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Raise unless PostgreSQL answers a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@contextmanager
def advisory_lock(engine: Engine, key: int) -> Iterator[bool]:
    """Hold a session-level advisory lock for the block; yields False when another holds it.

    Held on a connection of its own: PostgreSQL releases it when that connection closes, so a
    process killed with SIGKILL leaves no stale lock, and "is someone working on it?" is
    "is the lock held?".
    """
    with engine.connect() as connection:
        held = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        connection.commit()
        try:
            yield bool(held)
        finally:
            if held:
                # Session-level locks outlive transactions: release before the connection
                # goes back to the pool.
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
