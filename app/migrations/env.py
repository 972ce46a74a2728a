"""Alembic environment: online migrations against the configured database."""

from alembic import context
from sqlalchemy import pool

import app.models  # noqa: F401  (registers every model on Base.metadata)
from app.db import Base, make_engine

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:  # app.migrations.alembic_config() always sets it
        raise SystemExit("no sqlalchemy.url in the Alembic configuration")
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            compare_type=True,
            # One transaction per migration, so a failure leaves the last good revision.
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
run_migrations_online()
