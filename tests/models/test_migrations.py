"""The models and the migrations describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db import Base, make_engine


def test_models_match_the_migrated_schema(migrated):
    """A model change without its migration (or the reverse) shows up as a difference."""
    import app.models  # noqa: F401  (registers every model on Base.metadata)

    engine = make_engine(migrated)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
