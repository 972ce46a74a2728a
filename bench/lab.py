"""The bench's own stack of real servers, the service's settings for it, and shared set-up.

The stack is a devstack Stack like the tests' (own ports, own PostgreSQL cluster and Redis,
never the shared ones: `environ={}` keeps DATABASE_URL/REDIS_URL of the shell out of it), with
Dovecot's limits raised for B6's thousand idle connections.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "ENCRYPTION_KEY",
    "MAIL_TLS_CA_FILE",
)

# 1000 idle IMAP connections are 1000 imap processes, each a client of anvil, stats and auth.
DOVECOT_EXTRA = """\
default_client_limit = 5000
mail_max_userip_connections = 2000
service imap {
  process_limit = 3000
}
service imap-login {
  process_limit = 400
}
"""


@dataclass
class Tenant:
    id: int
    slug: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


class Lab:
    """One benchmark run's servers and the service's settings for them."""

    def __init__(self, quick: bool, work: Path | None = None) -> None:
        self.quick = quick
        self.name = f"bench{uuid.uuid4().hex[:6]}"
        self.work = work or ROOT / ".stack" / f"{self.name}-work"
        self.stack = None
        self.info = None
        self.env: dict[str, str] = {}
        self._ctx = None
        self._cache: dict = {}
        self.pids: dict[str, int] = {}  # API base URL -> pid, for py-spy
        self.profiling = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        from devstack import Stack
        from devstack.dev import mail_pairs

        self.work.mkdir(parents=True, exist_ok=True)
        self.stack = Stack(
            self.name, ROOT / ".stack", persistent=False, environ={}, dovecot_extra=DOVECOT_EXTRA
        )
        self.info = self.stack.start()
        self.env = {
            "DATABASE_URL": self.info.database_url,
            "REDIS_URL": self.info.redis_url,
            "JWT_SECRET": secrets.token_urlsafe(48),
            "ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "MAIL_TLS_CA_FILE": self.info.ca_file,
            # Exactly the stack's mail servers, as `make dev` allows them.
            "ALLOWED_PRIVATE_HOSTS": ",".join(mail_pairs(self.info)),
            "JWT_TTL_SECONDS": "172800",
            # The limits are tested elsewhere; here they must never answer 429, yet still run.
            "RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000000",
            "RATE_LIMIT_REQUESTS_PER_HOUR": "1000000000",
            "LOGIN_RATE_LIMIT_PER_MINUTE": "1000000000",
            # B6 connects 1000 accounts to one tenant (the quota itself is tested elsewhere).
            "TENANT_MAX_ACCOUNTS": "100000",
            "WAITRESS_THREADS": "8",
            "LOG_LEVEL": "INFO",
        }
        from alembic import command

        from app.migrations import alembic_config

        command.upgrade(alembic_config(self.env["DATABASE_URL"]), "head")

    def stop(self, keep_logs: bool = False) -> None:
        """Stop the stack; the work dir (Maildirs, logs) goes too unless a failure needs it."""
        if self._ctx is not None:
            self._ctx.close()
        if self.stack is not None:
            self.stack.stop()
        if keep_logs:
            print(f"bench: logs kept in {self.work}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(self.work)], check=False)

    # -- database and service objects --------------------------------------------------------

    @property
    def ctx(self):
        """A service context on the stack, as a worker builds one."""
        if self._ctx is None:
            from app.context import ServiceContext

            self._ctx = ServiceContext.build(self.settings())
        return self._ctx

    @property
    def sessions(self):
        return self.ctx.sessions

    @contextmanager
    def database(self, url: str) -> Iterator[None]:
        """Point every helper (and the processes started meanwhile) at another database."""
        saved = (self.env["DATABASE_URL"], self._ctx)
        self.env["DATABASE_URL"], self._ctx = url, None
        try:
            yield
        finally:
            if self._ctx is not None:
                self._ctx.close()
            self.env["DATABASE_URL"], self._ctx = saved

    def new_database(self, prefix: str) -> str:
        """A fresh database on the stack's server, migrated to head; its URL."""
        import psycopg
        from alembic import command
        from sqlalchemy.engine import make_url

        from app.migrations import alembic_config

        name = f"{prefix}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.info.admin_database_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(self.info.admin_database_url).set(database=name)
        url = url.render_as_string(hide_password=False)
        command.upgrade(alembic_config(url), "head")
        return url

    @property
    def engine(self):
        return self.ctx.engine

    def settings(self):
        from app.config import Settings

        return Settings.from_mapping(self.env)

    def tenant(self, prefix: str) -> Tenant:
        """A new tenant with one user and a token, made with the service's own functions."""
        from app.services.tenants import create_tenant, create_user, user_token

        slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
        with self.ctx.work() as unit:
            tenant = create_tenant(unit, slug)
            create_user(unit, slug, "bench", secrets.token_urlsafe(12))
            return Tenant(tenant.id, slug, user_token(unit, slug, "bench"))

    def mailboxes(self, prefix: str, count: int) -> dict[str, str]:
        """`count` new Dovecot users (one reload for all): email -> password."""
        users = {f"{prefix}{i}-{uuid.uuid4().hex[:6]}@example.test": None for i in range(count)}
        return self.stack.add_users(users)

    def account(self, tenant_id: int, email: str, password: str) -> int:
        """An account row for a stack mailbox: IMAP in plain text over loopback (as mbsync)."""
        from app.services.accounts import AccountFields, ServerFields, create_account
        from app.states import Security

        info = self.info
        imap = ServerFields(info.host, info.imap_port, Security.NONE, email, password)
        smtp = ServerFields(info.host, info.submission_port, Security.STARTTLS, email, password)
        with self.ctx.work(tenant_id) as unit:
            fields = AccountFields(email, None, imap, smtp)
            return create_account(unit, fields, verify=False).id

    def delete_account(self, account_id: int) -> None:
        """Drop an account and everything synced for it, and vacuum, outside any timing."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM accounts WHERE id = :id"), {"id": account_id})
            conn.execute(
                text("DELETE FROM message_raws WHERE account_id = :id"), {"id": account_id}
            )
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE messages, message_raws")
            )

    def syncer(self, observer=None):
        """A Syncer as `emailservice sync` builds it: no per-run limits."""
        from app.services.sync import Syncer, SyncLimits

        return Syncer(self.ctx, SyncLimits(max_messages=None, max_seconds=None), observer)

    def cached(self, key, make):
        """Set-up shared by benchmarks of one run (e.g. B3 reuses a synced mailbox)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # -- processes ---------------------------------------------------------------------------

    def process_env(self, **extra: str) -> dict[str, str]:
        from app.config import SETTINGS

        env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
        env.update(self.env)
        env["PYTHONPATH"] = str(ROOT)  # bench.hello and bench.gunicorn_app, from any cwd
        env.update(extra)
        return env

    @contextmanager
    def process(
        self, args: list[str], name: str, ready_url: str | None = None, **extra: str
    ) -> Iterator[subprocess.Popen]:
        """A service process (its own session, logs under the work dir), stopped afterwards."""
        log = self.work / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                args,
                env=self.process_env(**extra),
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            if ready_url:
                try:
                    wait_http(ready_url)
                except RuntimeError:
                    tail = log.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"{name} did not start: {tail}") from None
            yield proc
        finally:
            stop_process(proc)

    @contextmanager
    def api(self, server: str = "waitress", threads: int = 8) -> Iterator[str]:
        """The API as a real process; yields its base URL.

        waitress: `emailservice serve` (what production runs); gunicorn: the same app under
        gunicorn's threaded worker with the same process and thread counts; hello: a bare WSGI
        app on Waitress with the same threads (the ceiling of the server itself).
        """
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if server == "waitress":
            args = [str(BIN / "emailservice"), "serve", "--port", str(port)]
        elif server == "gunicorn":
            args = [
                str(BIN / "gunicorn"),
                "--workers", "1",
                "--worker-class", "gthread",
                "--threads", str(threads),
                "--bind", f"127.0.0.1:{port}",
                "--backlog", "2048",
                "--no-control-socket",
                "bench.gunicorn_app:app",
            ]  # fmt: skip
        elif server == "hello":
            args = [
                sys.executable,
                "-m",
                "bench.hello",
                "--port",
                str(port),
                "--threads",
                str(threads),
            ]
        else:
            raise ValueError(server)
        with self.process(
            args, f"api-{server}-{port}", ready_url=base + "/health", WAITRESS_THREADS=str(threads)
        ) as proc:
            self.pids[base] = proc.pid
            yield base


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process's group (its own session), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass
