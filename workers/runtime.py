"""What a job needs from its process: settings, a database session and Redis.

Built lazily, once per worker process. RQ forks a work-horse per job; the horse must not use
the parent's pooled PostgreSQL connections (two processes on one socket corrupt both), so
`after_fork()` drops them without closing the parent's (SQLAlchemy's documented recipe).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.queues import make_redis
from app.secrets import SecretBox


@cache
def settings() -> Settings:
    """Settings of this worker process."""
    return Settings.load()


@cache
def engine() -> Engine:
    """This process's engine."""
    return make_engine(settings().database_url)


@cache
def sessions() -> sessionmaker[Session]:
    """This process's session factory (for services that open short transactions themselves)."""
    return make_sessionmaker(engine())


@cache
def secretbox() -> SecretBox:
    """Decrypts stored credentials with this process's ENCRYPTION_KEY."""
    return SecretBox(settings().encryption_keys)


@cache
def redis() -> Redis:
    """This process's Redis client."""
    return make_redis(settings().redis_url)


@contextmanager
def session() -> Iterator[Session]:
    """A unit of work for one job: committed when the block succeeds."""
    with session_scope(sessions()) as s:
        yield s


def after_fork() -> None:
    """Forget connections inherited from the parent process."""
    if engine.cache_info().currsize:
        engine().dispose(close=False)
