"""search vectors filled after the rows: a mailbox is readable before it is searchable

`messages.search_vector` was GENERATED ... STORED (migration 0005): every INSERT computed it,
and in the B1 benchmark's initial sync its to_tsvector and GIN entries were ~1.6 of the ~2.3
CPU-seconds PostgreSQL spent per 2000 messages, which every message waited for before it
could be listed and read. From now on it is a plain column:
- `ALTER COLUMN ... DROP EXPRESSION` keeps every stored value and changes only the catalogue
  (no rewrite; a brief ACCESS EXCLUSIVE lock).
- The vector is the same expression as before, now the immutable SQL function
  `message_search_vector(subject, from_name, from_email, recipients, text_body)`.
- A trigger keeps every writer right, old code during a rolling upgrade included: an INSERT
  without a vector gets one, an UPDATE of subject, sender, recipients or text gets a new one,
  exactly as the generated column did. A transaction that sets
  `emailservice.defer_search = on` (the sync's batches) opts out: its rows are stored with
  a NULL vector, and the indexing job (app.services.indexing) fills them in batches.
- `ix_messages_unindexed` (account_id, id) WHERE search_vector IS NULL: the indexing job's
  next batch and the scheduler's catch-up (which accounts have rows to index?) read only
  what is left to do. Built CONCURRENTLY (writes go on meanwhile).

The downgrade turns the column back into the generated one (rewrites the table and rebuilds
ix_messages_search: a quiet hour on a big installation).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:40:00.000000
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CONFIG = "mail_search"

# Keep in step with app.models.sync.SEARCH_VECTOR (the same expression, as 0005 generated it).
SEARCH_VECTOR = f"""
setweight(to_tsvector('{CONFIG}'::regconfig, left(coalesce(subject, ''), 1000)), 'A')
|| setweight(to_tsvector('{CONFIG}'::regconfig,
    left(coalesce(from_name, ''), 1000) || ' ' || left(coalesce(from_email, ''), 1000) || ' '
    || translate(left(coalesce(from_email, ''), 1000), '@.', '  ') || ' '
    || left(coalesce(recipients, ''), 8000) || ' '
    || translate(left(coalesce(recipients, ''), 8000), '@.<>', '    ')), 'B')
|| setweight(to_tsvector('{CONFIG}'::regconfig, left(coalesce(text_body, ''), 65536)), 'C')
"""

FUNCTION = f"""
CREATE FUNCTION message_search_vector(
    subject text, from_name text, from_email text, recipients text, text_body text
) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT {SEARCH_VECTOR} $$
"""

TRIGGER_FUNCTION = """
CREATE FUNCTION messages_search_vector_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('emailservice.defer_search', true), '') = 'on' THEN
        -- The indexing job computes it (an UPDATE here: the old vector is stale).
        IF TG_OP = 'UPDATE' THEN
            NEW.search_vector := NULL;
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.search_vector IS NOT NULL THEN
        RETURN NEW;  -- given by the writer (a moved copy keeps its original's)
    END IF;
    NEW.search_vector := message_search_vector(
        NEW.subject, NEW.from_name, NEW.from_email, NEW.recipients, NEW.text_body);
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE messages ALTER COLUMN search_vector DROP EXPRESSION")
    op.execute(FUNCTION)
    op.execute(TRIGGER_FUNCTION)
    op.execute(
        "CREATE TRIGGER messages_search_vector_insert BEFORE INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION messages_search_vector_fill()"
    )
    op.execute(
        "CREATE TRIGGER messages_search_vector_update BEFORE UPDATE OF subject, from_name, "
        "from_email, recipients, text_body ON messages "
        "FOR EACH ROW EXECUTE FUNCTION messages_search_vector_fill()"
    )
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_unindexed")  # a failed build
        op.create_index(
            "ix_messages_unindexed",
            "messages",
            ["account_id", "id"],
            postgresql_where=sa.text("search_vector IS NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_messages_unindexed", table_name="messages")
    op.execute("DROP TRIGGER messages_search_vector_update ON messages")
    op.execute("DROP TRIGGER messages_search_vector_insert ON messages")
    op.execute("DROP FUNCTION messages_search_vector_fill()")
    op.execute("DROP FUNCTION message_search_vector(text, text, text, text, text)")
    op.drop_index("ix_messages_search", table_name="messages")
    op.drop_column("messages", "search_vector")
    op.add_column(
        "messages",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(SEARCH_VECTOR, persisted=True),
            nullable=True,
        ),
    )
    op.create_index(
        "ix_messages_search",
        "messages",
        ["tenant_id", "search_vector"],
        postgresql_using="gin",
    )
