"""The `emailservice` command: serve, worker, scheduler, db, check.

Worker-side commands import `workers/` lazily: the web app itself never does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from app.config import ConfigError, Settings
from app.logs import configure_logging

if TYPE_CHECKING:
    from app.context import Unit


def load_settings() -> Settings:
    """Settings from the environment and .env, or exit with one line naming the bad one."""
    try:
        return Settings.load()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Self-hosted multi-tenant email service."""


@cli.command()
@click.option("--host", help="Address to listen on [default: API_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), help="Port [default: API_PORT].")
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
def serve(host: str | None, port: int | None, reload: bool) -> None:
    """Run the API under Waitress (starts even while PostgreSQL or Redis is down)."""
    settings = load_settings()
    if reload:
        _serve_with_reload()
        return
    from app import create_app
    from app.serve import serve as serve_gracefully

    configure_logging(settings.log_level, background=True)
    serve_gracefully(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        threads=settings.waitress_threads,
        trusted_proxies=settings.trusted_proxies,
    )


def _serve_with_reload() -> None:
    try:
        from watchfiles import run_process
    except ImportError:
        raise click.ClickException("--reload needs watchfiles: pip install 'emailservice[dev]'")
    import app

    source = app.__path__[0]
    # The child is this same command without --reload; it re-reads code on every start.
    argv = [a for a in sys.argv if a != "--reload"]
    run_process(source, target=" ".join([sys.executable, "-m", "app.cli", *argv[1:]]))


@cli.command()
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
def worker(queues: tuple[str, ...], burst: bool) -> None:
    """Run an RQ worker on QUEUES (default: every queue the service uses)."""
    from app.jobs import QUEUES

    for name in queues:
        if name not in QUEUES:
            raise click.BadParameter(
                f"{name!r} is not a queue of this service ({', '.join(QUEUES)})",
                param_hint="QUEUES",
            )
    settings = load_settings()
    configure_logging(settings.log_level)
    from workers.worker import run_worker

    run_worker(queues, burst=burst)


@cli.command()
@click.option("--burst", is_flag=True, help="Enqueue what is due once, then exit.")
def scheduler(burst: bool) -> None:
    """Run the periodic scheduler (rq-scheduler; one is active at a time)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    from workers.schedule import run_scheduler

    run_scheduler(burst=burst)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from alembic import command

    from app.migrations import alembic_config

    settings = load_settings()
    configure_logging(settings.log_level)
    command.upgrade(alembic_config(settings.database_url), revision)
    click.echo(f"database at {revision}")


@db.command()
@click.option("-m", "--message", required=True, help="What the revision changes.")
def revision(message: str) -> None:
    """Write a new migration by comparing the models with the database (developers)."""
    from alembic import command

    from app.migrations import alembic_config, head_revisions

    settings = load_settings()
    # Revisions are numbered 0001, 0002, ... so their order reads off the file names.
    number = (
        max((int(r) for r in head_revisions(settings.database_url) if r.isdigit()), default=0) + 1
    )
    command.revision(
        alembic_config(settings.database_url),
        message=message,
        autogenerate=True,
        rev_id=f"{number:04d}",
    )


@contextmanager
def _unit(settings: Settings) -> Iterator[Unit]:
    """The command's service context and unit of work; service errors become one-line CLI
    errors."""
    from app.context import ServiceContext
    from app.errors import ServiceError

    ctx = ServiceContext.build(settings)
    try:
        with ctx.work() as unit:
            yield unit
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        ctx.close()


@cli.group()
def tenant() -> None:
    """Tenants."""


@tenant.command("create")
@click.argument("name")
def tenant_create(name: str) -> None:
    """Create the tenant NAME (a slug: [a-z0-9-]{1,63})."""
    from app.services.tenants import create_tenant

    with _unit(load_settings()) as unit:
        created = create_tenant(unit, name)
    click.echo(f"tenant {created.slug} created")


def _read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    # Piped: the first line is the password (never a command-line argument, which `ps` shows).
    return sys.stdin.readline().rstrip("\r\n")


@cli.group()
def user() -> None:
    """Users of a tenant."""


@user.command("create")
@click.option("--tenant", "tenant_name", required=True, help="The tenant's name.")
@click.argument("username")
def user_create(tenant_name: str, username: str) -> None:
    """Create USERNAME in a tenant; the password comes from a prompt, or stdin when piped."""
    from app.services.tenants import create_user

    settings = load_settings()
    password = _read_password()
    with _unit(settings) as unit:
        create_user(unit, tenant_name, username, password)
    click.echo(f"user {username} created in tenant {tenant_name}")


@user.command("delete")
@click.option("--tenant", "tenant_name", required=True, help="The tenant's name.")
@click.argument("username")
def user_delete(tenant_name: str, username: str) -> None:
    """Delete USERNAME from a tenant; their tokens stop working at once."""
    from app.services.tenants import delete_user

    with _unit(load_settings()) as unit:
        delete_user(unit, tenant_name, username)
    click.echo(f"user {username} deleted from tenant {tenant_name}")


@cli.command()
@click.option("--tenant", "tenant_name", required=True, help="The tenant's name.")
@click.argument("username")
def token(tenant_name: str, username: str) -> None:
    """Print an access token for USERNAME (for scripts and first steps)."""
    from app.services.tenants import user_token

    with _unit(load_settings()) as unit:
        click.echo(user_token(unit, tenant_name, username))


@cli.group()
def keys() -> None:
    """ENCRYPTION_KEY management."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key; put it first in ENCRYPTION_KEY, then run `keys rotate`."""
    from app.secrets import generate_key

    click.echo(generate_key())


@keys.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret under the newest key of ENCRYPTION_KEY."""
    from app.services.accounts import rotate_secrets

    with _unit(load_settings()) as unit:
        rotated, total = rotate_secrets(unit)
    click.echo(f"{rotated} of {total} secrets re-encrypted under the newest key")


@cli.command()
@click.argument("account_id", type=int)
def sync(account_id: int) -> None:
    """Sync ACCOUNT_ID now, in the foreground, with progress (operators, debugging)."""
    from app.context import ServiceContext
    from app.errors import ServiceError
    from app.mail import MailConnectionError
    from app.services.indexing import index_account
    from app.services.sync import Syncer, SyncLimits, SyncObserver

    class ProgressBars(SyncObserver):
        """One progress bar per folder with mail to fetch."""

        def __init__(self) -> None:
            self.bar: Any = None  # click's ProgressBar, whose class click keeps private

        def folder_started(self, folder: str, missing: int) -> None:
            if missing:
                self.bar = click.progressbar(length=missing, label=folder, show_pos=True)
                self.bar.__enter__()

        def batch_committed(self, folder: str, uids: list[int]) -> None:
            if self.bar is not None:
                self.bar.update(len(uids))

        def folder_done(self, folder: str) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            else:
                click.echo(f"{folder}: up to date")

    ctx = ServiceContext.build(load_settings())
    syncer = Syncer(ctx, SyncLimits(max_messages=None, max_seconds=None), ProgressBars())
    indexed = 0
    try:
        outcome = syncer.sync_account(account_id)
        if outcome.messages_fetched:
            # Searchable when the command returns, with or without a worker running.
            indexed = index_account(ctx, account_id)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    except MailConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ctx.close()
    if outcome.busy:
        raise click.ClickException(f"a sync of account {account_id} is running elsewhere")
    if outcome.auth_failed:
        raise click.ClickException(f"account {account_id}: the IMAP server refused the login")
    click.echo(
        f"account {account_id} synced: {outcome.messages_fetched} messages fetched,"
        f" {indexed} indexed for search"
    )


@cli.command()
@click.option("--shard", default="0/1", help="K/N: watch only accounts whose id % N == K.")
def idle(shard: str) -> None:
    """Hold IMAP IDLE on INBOX for active accounts; enqueue a sync when mail arrives."""
    try:
        index, count = (int(part) for part in shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{shard!r} is not K/N with 0 <= K < N", param_hint="--shard")
    settings = load_settings()
    configure_logging(settings.log_level)
    from workers.idle import run_idle

    run_idle(index, count)


@cli.command()
def check() -> None:
    """Run the start-up checks; exit 1 if any fails."""
    from app.checks import run_checks

    ok = True
    for result in run_checks():
        mark = click.style("PASS", fg="green") if result.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {result.name}: {result.detail}")
        ok = ok and result.ok
    sys.exit(0 if ok else 1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="emailservice")


if __name__ == "__main__":
    main()
