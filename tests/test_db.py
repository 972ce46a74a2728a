"""The engine's pooled connections across a PostgreSQL restart (every connection cut, as a
TcpProxy in front of the real server plays it): one that sat idle is pinged and replaced
unseen; one given back a moment ago is used without the ping's round trip."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy.exc
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app import db
from tests.support import TcpProxy


@contextmanager
def proxied_engine(env) -> Iterator[tuple[Engine, TcpProxy]]:
    url = make_url(env["DATABASE_URL"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    engine = db.make_engine(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )
    try:
        yield engine, proxy
    finally:
        engine.dispose()
        proxy.stop()


def backend(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def restart(proxy: TcpProxy) -> None:
    proxy.stop()
    proxy.start()


def test_a_connection_cut_while_idle_is_replaced_unseen(env):
    with proxied_engine(env) as (engine, proxy):
        first = backend(engine)
        restart(proxy)
        time.sleep(db.PING_AFTER_IDLE_SECONDS + 0.2)
        assert backend(engine) != first  # no error: the ping found it dead and reconnected


def test_a_connection_given_back_a_moment_ago_is_not_pinged_and_the_pool_recovers(
    env, monkeypatch
):
    # "A moment" made long, so that a slow machine cannot turn this into the idle case.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    with proxied_engine(env) as (engine, proxy):
        first = backend(engine)
        restart(proxy)
        with pytest.raises(sqlalchemy.exc.OperationalError) as failed:
            backend(engine)  # used as it was: its statement meets the cut
        assert failed.value.connection_invalidated
        assert backend(engine) != first  # the pool let the dead connection go
