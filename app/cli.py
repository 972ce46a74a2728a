"""The `emailservice` command: serve, worker, scheduler, db, check.

Worker-side commands import `workers/` lazily: the web app itself never does.
"""
from __future__ import annotations

import sys

import click

from app.config import ConfigError, Settings
from app.logs import configure_logging


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
    import waitress

    from app import create_app

    configure_logging(settings.log_level)
    waitress.serve(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        threads=settings.waitress_threads,
        ident="emailservice",
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
    from app.queues import QUEUES

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

    from app.migrations import alembic_config

    settings = load_settings()
    command.revision(alembic_config(settings.database_url), message=message, autogenerate=True)


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
