"""The engine and sessions; a session is opened at the edge (app.context) and passed down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every model; its metadata is what Alembic compares against."""


# A pooled connection idle at least this long is pinged before it is used again.
PING_AFTER_IDLE_SECONDS = 0.25


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine that connects lazily, so the service starts while PostgreSQL is down."""
    engine = create_engine(
        database_url,
        connect_args={"connect_timeout": 3, "application_name": "emailservice"},
        **kwargs,
    )
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """SQLAlchemy's pre-ping, only for connections that sat idle in the pool: a connection
    dropped by a PostgreSQL restart is detected and replaced (with every connection pooled
    before it), so the service recovers by itself. One given back less than
    PING_AFTER_IDLE_SECONDS ago is used as it is: no restart fits in that time, and the ping
    was one of the four round trips of a short read. (A connection that dies in use fails its
    statement either way: the same as PostgreSQL going away mid-transaction.)"""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")  # None: just connected (cleared on invalidate)
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise InvalidatePoolError() from error
            raise


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
        # Outside any transaction: a session-level lock needs none, and each statement is one
        # round trip instead of three (BEGIN, the statement, COMMIT).
        connection.execution_options(isolation_level="AUTOCOMMIT")
        held = connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        try:
            yield bool(held)
        finally:
            if held:
                # Session-level locks outlive transactions: release before the connection
                # goes back to the pool (which puts its isolation level back).
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
