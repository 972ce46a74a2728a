"""Test fixtures: one stack of real servers per test session, shared by every test.

The stack (devstack) is the same one `make dev` runs: PostgreSQL, Redis, Dovecot and Postfix on
loopback with free ports, a database and a Redis db of its own, so a test run beside `make dev`
or another run collides with nothing.
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import allowing, mail_pairs

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: a missing tool must be installed, not skipped."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


def pytest_terminal_summary(terminalreporter):
    """Say how many level-4 checks (a deployed host, docs/deploy.md) ran, and how they ended."""
    counts = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        counts[outcome] = sum(
            1
            for report in terminalreporter.stats.get(outcome, [])
            if getattr(report, "when", "call") == "call" and "level4" in report.keywords
        )
    if any(counts.values()):
        terminalreporter.write_line(
            "level-4 checks on a deployed host: "
            + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
        )


@pytest.fixture(scope="session")
def stack_control() -> Iterator:
    """The real servers for this session (a devstack Stack), stopped and removed at the end."""
    from devstack import Stack

    stack = Stack(name=f"t{uuid.uuid4().hex[:8]}", root=ROOT / ".stack", persistent=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(stack_control):
    """Addresses, ports and users of this session's servers."""
    return stack_control.info


# Dovecot advertising neither CONDSTORE nor QRESYNC, for the sync's other path (RFC 7162 is
# optional for servers). The override replaces the post-login capability list.
PLAIN_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH "
    "LIST-STATUS BINARY MOVE SPECIAL-USE"
)


@pytest.fixture(scope="session")
def plain_stack_control() -> Iterator:
    """A second stack whose Dovecot has no CONDSTORE/QRESYNC (started only when needed)."""
    from devstack import Stack

    stack = Stack(
        name=f"p{uuid.uuid4().hex[:8]}",
        root=ROOT / ".stack",
        persistent=False,
        dovecot_extra=f"protocol imap {{\n  imap_capability = {PLAIN_CAPABILITIES}\n}}\n",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def new_encryption_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def env(stack) -> dict[str, str]:
    """The service's settings, as environment variables, for this session's stack."""
    return {
        "DATABASE_URL": stack.database_url,
        "REDIS_URL": stack.redis_url,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": new_encryption_key(),
        "LOG_LEVEL": "INFO",
        "MAIL_TLS_CA_FILE": stack.ca_file,
        # Exactly this stack's mail servers; a test with a peer of its own allows it too
        # (tests.support.allowing).
        "ALLOWED_PRIVATE_HOSTS": ",".join(mail_pairs(stack)),
        # Tests share one client address and make many requests per tenant; the limits
        # themselves are tested with apps built with low ones.
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "100000",
        "RATE_LIMIT_REQUESTS_PER_HOUR": "100000",
        "LOGIN_RATE_LIMIT_PER_MINUTE": "100000",
    }


@pytest.fixture(scope="session")
def migrated(env: dict[str, str]) -> str:
    """The stack's database, migrated to head once per session."""
    from alembic import command

    from app.migrations import alembic_config

    command.upgrade(alembic_config(env["DATABASE_URL"]), "head")
    return env["DATABASE_URL"]


@pytest.fixture
def app(env, migrated):
    from app import create_app

    app = create_app(env)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def redis_client(env):
    from app.context import make_redis

    connection = make_redis(env["REDIS_URL"])
    yield connection
    connection.close()


@pytest.fixture
def empty_queues(redis_client):
    """No job of another test in any queue, nor scheduled for later (a retry), before or after:
    a worker started by a test runs only what the test put there."""
    from rq.registry import ScheduledJobRegistry

    from app.jobs import QUEUES, Jobs

    def empty() -> None:
        for name in QUEUES:
            queue = Jobs(redis_client).queue(name)
            queue.empty()
            registry = ScheduledJobRegistry(queue=queue)
            for job_id in registry.get_job_ids():
                registry.remove(job_id, delete_job=True)

    empty()
    yield
    empty()


@pytest.fixture(scope="session")
def ctx(env, migrated):
    """A service context on this session's stack, as a worker or the CLI builds one."""
    from app.config import Settings
    from app.context import ServiceContext

    context = ServiceContext.build(Settings.from_mapping(env))
    yield context
    context.close()


@pytest.fixture
def contexts():
    """Service contexts a test builds from settings of its own (`contexts(settings)`), as a
    worker or the CLI would; closed at the test's end."""
    from app.config import Settings
    from app.context import ServiceContext

    built = []

    def build(settings: dict[str, str]):
        built.append(ServiceContext.build(Settings.from_mapping(settings)))
        return built[-1]

    yield build
    for context in built:
        context.close()


@pytest.fixture
def ctx_allowing(env, ctx, contexts):
    """Service contexts whose host policy allows what `ctx`'s does and some HOST:PORT pairs
    more (a test's own peer): `ctx_allowing("127.0.0.1:PORT")`; closed at the test's end."""
    base = dict(env, ALLOWED_PRIVATE_HOSTS=",".join(ctx.settings.allowed_private_hosts))
    return lambda *pairs: contexts(allowing(base, *pairs))


@pytest.fixture(scope="session")
def db_sessionmaker(ctx):
    return ctx.sessions


@pytest.fixture
def unit(ctx):
    """A unit of work without a tenant (as workers and the CLI have)."""
    with ctx.work() as work:
        yield work


@pytest.fixture
def db(db_sessionmaker):
    """A session on the test database for arranging and inspecting rows (commits for real)."""
    with db_sessionmaker() as session:
        yield session


@dataclass
class TenantUser:
    slug: str
    tenant_id: int
    user_id: int
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_tenant_user(ctx, prefix: str = "t") -> TenantUser:
    """A new tenant (unique slug) with one user and a valid token."""
    from app.services.tenants import create_tenant, create_user, user_token

    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    password = secrets.token_urlsafe(12)
    with ctx.work() as unit:
        tenant = create_tenant(unit, slug)
        user = create_user(unit, slug, "alice", password)
        token = user_token(unit, slug, "alice")
        return TenantUser(slug, tenant.id, user.id, "alice", password, token)


@pytest.fixture
def tenant_a(ctx) -> TenantUser:
    return make_tenant_user(ctx, "a")


@pytest.fixture
def tenant_b(ctx) -> TenantUser:
    return make_tenant_user(ctx, "b")


@pytest.fixture
def mail_account_body(stack):
    """A body for POST /api/accounts: the stack's alice, IMAP over STARTTLS, SMTP submission."""

    def body(user: str = "alice@example.test", **changes) -> dict:
        data = {
            "email": user,
            "display_name": "Alice Example",
            "imap": {
                "host": stack.host,
                "port": stack.imap_port,
                "security": "starttls",
                "username": user,
                "password": stack.users[user],
            },
            "smtp": {
                "host": stack.host,
                "port": stack.submission_port,
                "security": "starttls",
                "username": user,
                "password": stack.users[user],
            },
        }
        data.update(changes)
        return data

    return body


@pytest.fixture
def fresh_database(stack, stack_control):
    """The URL of an empty database on the stack's server, dropped afterwards.

    A database of its own is a deployment of its own, whose ids start again at 1: the
    stack's Redis is emptied before and after, as a deployment's Redis is its own. Otherwise
    what Redis keeps about another database's ids (RQ's job records, such as the tenant id
    a worker caches in the meta of job `outbox-send-1-0`, or a kept acceptance of outbox
    entry 1) would apply to this one's, and tests would depend on their order."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(stack.admin_database_url).set(drivername="postgresql")
    name = f"es_fresh_{uuid.uuid4().hex[:10]}"
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    stack_control.flush_redis()  # keeps the stack's claim on the Redis database
    yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )
    stack_control.flush_redis()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_migrated_env(env, fresh_database):
    """Settings pointing at a database of this test's own, migrated to head."""
    from alembic import command

    from app.migrations import alembic_config

    command.upgrade(alembic_config(fresh_database), "head")
    return dict(env, DATABASE_URL=fresh_database)


@pytest.fixture
def fresh_ctx(fresh_migrated_env):
    """A service context on a database of this test's own, migrated to head."""
    from app.config import Settings
    from app.context import ServiceContext

    context = ServiceContext.build(Settings.from_mapping(fresh_migrated_env))
    yield context
    context.close()


@pytest.fixture(scope="session")
def user_pools():
    """Mail users created in bulk per stack (each creation reloads Dovecot's and Postfix's maps)."""
    return {}


@pytest.fixture
def mailbox(stack_control, user_pools):
    """A fresh mail user on this session's Dovecot (the sync tests also use one without
    CONDSTORE: tests/services/conftest.py)."""
    from tests.mailbox import UserPool

    return user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()


@pytest.fixture
def account_id(ctx, tenant_a, mailbox) -> int:
    """An account of tenant A for `mailbox`."""
    from tests.mailbox import add_account

    return add_account(ctx, tenant_a.tenant_id, mailbox)


@pytest.fixture
def make_syncer(ctx):
    """Syncers with test-sized limits (keyword arguments override SyncLimits fields)."""
    from datetime import timedelta

    from app.services.sync import Syncer, SyncLimits

    def make(observer=None, context=None, **limits) -> Syncer:
        defaults = dict(max_messages=None, max_seconds=None, flag_scan_interval=timedelta(0))
        defaults.update(limits)
        return Syncer(context or ctx, SyncLimits(**defaults), observer)

    return make
