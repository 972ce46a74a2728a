"""Search storage: migration 0005 as a non-superuser owner, its backfill, the vector's bound."""

from __future__ import annotations

import hashlib
import random
import uuid

import psycopg
from alembic import command
from sqlalchemy import MetaData, Table, create_engine, insert, select, text
from sqlalchemy.engine import make_url

from app.mail.imap import FetchedMessage, Flags
from app.migrations import alembic_config
from app.models import Message
from app.services.sync.rows import FolderState, message_row
from tests.conftest import make_tenant_user
from tests.mailbox import message
from tests.services.search_corpus import Mailboxes, utc


def test_the_migration_runs_as_a_database_owner_who_is_not_a_superuser(stack):
    """As in production: pg_trgm, btree_gin and unaccent are trusted extensions."""
    admin = make_url(stack.admin_database_url).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    suffix = uuid.uuid4().hex[:10]
    role, database = f"es_owner_{suffix}", f"es_owner_{suffix}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    try:
        url = admin.set(drivername="postgresql+psycopg", username=role, database=database)
        command.upgrade(alembic_config(url.render_as_string(hide_password=False)), "head")
        engine = create_engine(url)
        with engine.connect() as connection:
            assert not connection.execute(
                text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar_one()
            vector = connection.execute(
                text("SELECT to_tsvector('mail_search', 'Grüße aus München')::text")
            ).scalar_one()
        engine.dispose()
        assert vector == "'aus':2 'grusse':1 'munchen':3"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_migration_fills_recipients_of_stored_mail_as_the_sync_does(fresh_database):
    config = alembic_config(fresh_database)
    command.upgrade(config, "0004")
    engine = create_engine(fresh_database)
    raw = message(
        "Before search",
        "stored before 0005",
        to="Ana Lima <ana@example.test>, bo@example.test",
        cc='"Müller, Jörg" <joerg@example.test>',
    )
    with engine.begin() as connection:
        ids = connection.execute(
            text(
                "WITH t AS (INSERT INTO tenants (slug) VALUES ('old') RETURNING id), "
                "a AS (INSERT INTO accounts (email, imap_host, imap_port, imap_security, "
                "  imap_username, imap_password_encrypted, smtp_host, smtp_port, smtp_security, "
                "  smtp_username, smtp_password_encrypted, tenant_id) "
                "  SELECT 'a@x.test', 'h', 1, 'none', 'u', '\\x00', 'h', 1, 'none', 'u', '\\x00', "
                "  id FROM t RETURNING id, tenant_id), "
                "f AS (INSERT INTO folders (account_id, name, remote_name, uidvalidity, tenant_id) "
                "  SELECT id, 'INBOX', 'INBOX', 1, tenant_id FROM a RETURNING *) "
                "INSERT INTO message_raws (account_id, sha256, data, tenant_id) "
                "SELECT account_id, :sha, :raw, tenant_id FROM f "
                "RETURNING id, account_id, tenant_id, (SELECT id FROM f)"
            ),
            {"sha": hashlib.sha256(raw).digest(), "raw": raw},
        ).one()
        raw_id, account_id, tenant_id, folder_id = ids
        state = FolderState(
            folder_id, account_id, tenant_id, "INBOX", "INBOX", 1, None, None, 0, None, 0
        )
        fetched = FetchedMessage(
            1, Flags(True, False, False, False, ()), utc(2024, 1, 1), len(raw), raw, None
        )
        row = message_row(state, 1, fetched, raw_id)
        expected = row.pop("recipients")
        for later in ("too_large", "over_quota"):  # columns of migration 0008
            row.pop(later)
        # The table as it was at 0004: only the columns the row has (later ones, with their
        # defaults, do not exist yet).
        then = Table(
            "messages", MetaData(), *(c._copy() for c in Message.__table__.c if c.name in row)
        )
        connection.execute(insert(then).values(row))
    command.upgrade(config, "head")
    with engine.connect() as connection:
        recipients, matches = connection.execute(
            text(
                "SELECT recipients, search_vector @@ plainto_tsquery('mail_search', 'lima joerg') "
                "FROM messages"
            )
        ).one()
    engine.dispose()
    assert (
        expected
        == "Ana Lima <ana@example.test>, bo@example.test, Müller, Jörg <joerg@example.test>"
    )
    assert recipients == expected
    assert matches


def test_the_vector_stays_bounded_whatever_the_body(ctx, db_sessionmaker):
    """The worst body for a tsvector (all distinct short words, 4-byte-ish letters) still
    stores: only its first 64 Ki characters are indexed, far under the 1 MB limit."""
    tenant = Mailboxes(ctx, make_tenant_user(ctx).tenant_id)
    inbox = tenant.folder(tenant.account("big@example.test"), "INBOX", "inbox")
    rng = random.Random(7)
    words = " ".join(
        chr(0x4E00 + rng.randrange(20000)) + chr(0x4E00 + rng.randrange(20000))
        for _ in range(300_000)
    )
    recipients = ", ".join(f"R{i} <r{i}@example.test>" for i in range(5000))
    message_id = tenant.store(inbox, message("Big", words + " tailword", to=recipients))
    with db_sessionmaker() as session:
        size = session.scalar(
            select(text("pg_column_size(search_vector)"))
            .select_from(Message)
            .where(Message.id == message_id)
        )
    assert size < 600_000
    assert tenant.search("tailword").hits == []  # past the indexed head
    assert [h.message.id for h in tenant.search("r3@example.test").hits] == [message_id]
