"""The service context's engine: a failed query's message names no parameter values."""

from __future__ import annotations

import logging
import secrets
import traceback

import pytest
import sqlalchemy.exc

from app.db import make_engine, make_sessionmaker
from app.models import User


def failed_insert(sessions, marker: str) -> sqlalchemy.exc.IntegrityError:
    """An insert that PostgreSQL refuses (no such tenant) carrying `marker` as a value that
    PostgreSQL's own message does not repeat (its DETAIL names only the missing key)."""
    with sessions() as session:
        session.add(User(tenant_id=2_000_000_000, username="u", password_hash=marker))
        with pytest.raises(sqlalchemy.exc.IntegrityError) as failed:
            session.flush()
        return failed.value


def test_a_failed_query_logs_no_parameter_values(ctx, env, caplog):
    marker = f"secret-{secrets.token_hex(8)}"
    log = logging.getLogger("app.test")
    with caplog.at_level(logging.DEBUG):
        error = failed_insert(ctx.sessions, marker)
        log.error("query failed", exc_info=error)
    shown = "".join(traceback.format_exception(error)) + caplog.text
    assert "violates foreign key constraint" in shown  # the failure itself is still told
    assert "parameters hidden" in shown
    assert marker not in shown

    # The same failure on an engine without the setting shows the value: what the test guards.
    engine = make_engine(env["DATABASE_URL"])
    try:
        assert marker in str(failed_insert(make_sessionmaker(engine), marker))
    finally:
        engine.dispose()
