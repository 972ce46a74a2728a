"""The service context: what every service needs, built once at each edge.

An edge is where work enters the service: the app factory builds one context for the web
process, a worker process builds one at start-up (its forked work-horses keep it, after
dropping inherited database connections), the CLI builds one per command. Services receive
the context, or the pieces of it they need, explicitly: nothing reaches for a global, and a
request and a job call the same service functions.

A `Unit` is one unit of work at an edge (a request, a CLI command, a step of a job): the
context plus one database session, bound to a tenant for API requests (app.tenancy).
Services that change something commit their unit themselves, once the change is whole, and
only then enqueue the jobs that act on it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis.exceptions
import sqlalchemy.exc
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.connector import MailConnector
from app.db import make_engine, make_sessionmaker, ping
from app.jobs import Jobs
from app.mail.imap import ImapLimits
from app.mail.smtp import SessionPool
from app.secrets import SecretBox
from app.telemetry import Counters
from app.tenancy import bind_tenant

# Redis not answering (refused, reset, timed out): the worker processes wait these out.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
# Failures of a dependency (PostgreSQL, Redis), not of the request: the caller may retry.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def freeze_startup_objects() -> None:
    """Move what a long-running process has built by now (modules, classes, mappers, its
    service context) out of the cyclic garbage collector's sight. A full collection walks
    every tracked object with the GIL held: in a process serving the API it took 106-128 ms,
    a stall of every thread (BENCHMARKS.md, B3); with these objects frozen, 2-3 ms. Forked
    work-horses inherit the frozen objects without writing to their pages."""
    gc.collect()
    gc.freeze()


def make_redis(redis_url: str) -> Redis:
    """A client whose calls fail within seconds when Redis is down, and reconnect after."""
    return Redis.from_url(
        redis_url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
    )


def imap_limits(settings: Settings) -> ImapLimits:
    """The IMAP read bounds of the settings (app.mail knows nothing of app.config)."""
    return ImapLimits(
        command_timeout=settings.imap_command_timeout_seconds,
        max_line_bytes=settings.imap_max_line_bytes,
        max_message_bytes=settings.max_message_bytes,
        max_folders=settings.max_folders_per_account,
    )


@dataclass(frozen=True)
class ServiceContext:
    """The collaborators of every service, for one process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    secrets: SecretBox
    connector: MailConnector  # the only way to a mail server
    redis: Redis
    jobs: Jobs  # the only way to enqueue work (app.jobs)
    counters: Counters  # job outcomes for /metrics
    # SMTP sessions kept between the send jobs this process runs (a send worker runs them one
    # after the other in its own process: workers/worker.py closes them when it stops).
    smtp_sessions: SessionPool = field(default_factory=SessionPool)

    @classmethod
    def build(cls, settings: Settings) -> ServiceContext:
        """Connects to nothing yet: the service starts while PostgreSQL or Redis is down."""
        # A failed query's message (and so every log line and traceback showing it) names no
        # parameter values, which can be mail, encrypted passwords or any user's data.
        engine = make_engine(settings.database_url, hide_parameters=True)
        secrets = SecretBox(settings.encryption_keys)
        connection = make_redis(settings.redis_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            secrets=secrets,
            connector=MailConnector(
                secrets,
                settings.mail_tls_ca_file or None,
                allowed_hosts=settings.allowed_private_hosts,
                verify_slots=settings.verify_in_flight_total,
                imap_limits=imap_limits(settings),
            ),
            redis=connection,
            jobs=Jobs(connection),
            counters=Counters(connection),
        )

    def unit(self, tenant_id: int | None = None) -> Unit:
        """A new unit of work (close it when done); bound to `tenant_id` when given."""
        session = self.sessions()
        if tenant_id is not None:
            bind_tenant(session, tenant_id)
        return Unit(self, session)

    @contextmanager
    def work(self, tenant_id: int | None = None) -> Iterator[Unit]:
        """A unit of work for the block; whatever it did not commit is rolled back."""
        unit = self.unit(tenant_id)
        try:
            yield unit
        finally:
            unit.close()

    def check_database(self) -> None:
        """Raise unless PostgreSQL answers."""
        ping(self.engine)

    def check_redis(self) -> None:
        """Raise unless Redis answers."""
        self.redis.ping()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pooled connections without closing them
        (two processes on one socket corrupt both; SQLAlchemy's documented recipe)."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


@dataclass
class Unit:
    """One unit of work: the context and one database session."""

    ctx: ServiceContext
    session: Session

    def bind_tenant(self, tenant_id: int) -> None:
        """From now on every query of this unit sees only this tenant's rows."""
        bind_tenant(self.session, tenant_id)

    def commit(self) -> None:
        self.session.commit()

    def close(self) -> None:
        """Roll back what was not committed and give the connection back."""
        self.session.close()
