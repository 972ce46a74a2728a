"""Migration 0011: the generated search vector becomes a plain column the indexing job fills,
without losing a stored vector, and old code inserting rows still gets theirs."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from app.migrations import alembic_config
from app.models.sync import SEARCH_VECTOR
from app.services import indexing
from tests.conftest import make_tenant_user
from tests.mailbox import message
from tests.services.search_corpus import Mailboxes

GENERATED = (
    "SELECT attgenerated FROM pg_attribute "
    "WHERE attrelid = 'messages'::regclass AND attname = 'search_vector'"
)
VECTORS = "SELECT id, search_vector::text FROM messages ORDER BY id"
RIGHT = f"SELECT count(*) FROM messages WHERE search_vector IS NOT DISTINCT FROM ({SEARCH_VECTOR})"


def test_upgrade_keeps_the_vectors_and_downgrade_computes_the_missing_ones(fresh_ctx):
    ctx = fresh_ctx
    url = ctx.settings.database_url
    boxes = Mailboxes(ctx, make_tenant_user(ctx, "mg").tenant_id)
    inbox = boxes.folder(boxes.account("m@example.test"), "INBOX", "inbox")

    ctx.engine.dispose()
    command.downgrade(alembic_config(url), "0010")
    with ctx.engine.connect() as connection:
        assert connection.scalar(text(GENERATED)) == "s"
    boxes.store(inbox, message("Before the upgrade", "Zitronenfalter im Büro"))
    with ctx.engine.connect() as connection:
        before = connection.execute(text(VECTORS)).all()
    assert before and all(vector for _, vector in before)

    ctx.engine.dispose()
    command.upgrade(alembic_config(url), "head")
    with ctx.engine.connect() as connection:
        assert connection.scalar(text(GENERATED)) == ""
        assert connection.execute(text(VECTORS)).all() == before
    # Old code (which never names the column) still gets a vector; the sync defers it.
    boxes.store(inbox, message("During the rolling upgrade", "Kiebitz"))
    with ctx.sessions.begin() as session:
        indexing.defer_search(session)
        session.execute(
            text(
                "INSERT INTO messages (tenant_id, account_id, folder_id, uidvalidity, uid, size,"
                " raw_id, subject, seen, flagged, answered, draft, keywords, to_addrs, cc_addrs,"
                ' bcc_addrs, reply_to, "references", headers, attachments, has_attachments)'
                " SELECT tenant_id, account_id, folder_id, uidvalidity, 99, size, raw_id,"
                " 'Deferred', seen, flagged, answered, draft, keywords, to_addrs, cc_addrs,"
                ' bcc_addrs, reply_to, "references", headers, attachments, has_attachments'
                " FROM messages ORDER BY id LIMIT 1"
            )
        )
    with ctx.engine.connect() as connection:
        assert connection.scalar(text(RIGHT)) == 2
        assert connection.scalar(text("SELECT count(*) FROM messages")) == 3
    assert [h.message.subject for h in boxes.search("kiebitz").hits] == [
        "During the rolling upgrade"
    ]

    # Down again: the generated column is back and holds every vector, the deferred one too.
    ctx.engine.dispose()
    command.downgrade(alembic_config(url), "0010")
    with ctx.engine.connect() as connection:
        assert connection.scalar(text(GENERATED)) == "s"
        assert connection.scalar(text(RIGHT)) == 3
    ctx.engine.dispose()
    command.upgrade(alembic_config(url), "head")
    with ctx.engine.connect() as connection:
        assert connection.scalar(text(RIGHT)) == 3
