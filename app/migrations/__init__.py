"""Alembic migrations, packaged with the code so `emailservice db upgrade` works anywhere."""

from __future__ import annotations

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration pointing at this package, with no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", "app:migrations")
    # ConfigParser interpolates '%'; a URL-encoded password must survive it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revisions(database_url: str) -> set[str]:
    """The revisions the code expects the database to be at."""
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty when never migrated)."""
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())
