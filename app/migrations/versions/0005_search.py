"""full-text search: a weighted tsvector, recipients, and the indexes search plans use

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00.000000

Text search configuration `mail_search`: `simple` (lower-case, no stemming, no stop words: mail
is written in every language, and a stemmer for one mangles the others) with `unaccent` in front
of it for words holding non-ASCII letters, so "naive" finds "naïve" and "Munchen" finds
"München" (and the other way round). Named explicitly everywhere, never the session's
default_text_search_config.

`search_vector` is GENERATED ... STORED: to_tsvector(regconfig, text) is immutable, so
PostgreSQL keeps it right on every insert and update and no code path can forget it.
Weights: subject A, sender and recipients B (names, addresses, and the addresses split at
"@" and "." so "smith" finds bob.smith@...), body C. Every part is cut to a bounded length so
the vector stays well under PostgreSQL's 1 MB tsvector limit: measured worst case for 64 Ki
characters of two-letter CJK words (all distinct) is about 0.3 MB, plain prose about 0.05 MB;
past ~16k words positions stop growing anyway (tsvector positions max out at 16383).

Indexes, each for a plan seen with EXPLAIN on 200k+ messages over two tenants (the test
tests/services/test_search_plans.py asserts these plans):
- ix_messages_search GIN (tenant_id, search_vector), btree_gin for tenant_id: a rare word is a
  Bitmap Index Scan that intersects the word's postings with the tenant's inside the index,
  so a small tenant never wades through a big tenant's hits for the same word.
- ix_messages_tenant_date btree (tenant_id, date DESC, id DESC): newest first with LIMIT walks
  this index and stops after a page (a common word, filters only, no query words); it is also
  the keyset (date, id) < cursor range.
- ix_messages_folder_date btree (folder_id, date DESC, id DESC): `in:FOLDER` (with
  `after:`/`before:` as the range on date) walks one folder in date order.
- ix_messages_addresses_trgm GIN (tenant_id, from_name, from_email, recipients) with
  gin_trgm_ops: `from:` / `to:` are case-insensitive substring matches (ILIKE '%...%'); a
  multicolumn GIN serves both (a BitmapOr of two scans of it for from_name OR from_email).

Index builds lock writes to messages for their duration: run this migration in a quiet hour
on a big installation. The downgrade leaves the extensions installed (shared, harmless).
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CONFIG = "mail_search"

# "Name <addr>" or "addr", comma-separated, in to, cc, bcc order: as _message_row writes it.
RECIPIENTS_BACKFILL = """
UPDATE messages m SET recipients = (
    SELECT string_agg(
        CASE WHEN coalesce(a ->> 'name', '') <> ''
            THEN (a ->> 'name') || ' <' || coalesce(a ->> 'email', '') || '>'
            ELSE coalesce(a ->> 'email', '') END,
        ', ' ORDER BY n)
    FROM jsonb_array_elements(m.to_addrs || m.cc_addrs || m.bcc_addrs) WITH ORDINALITY AS e(a, n)
)
"""

# Keep in step with Message.search_vector (app/models/sync.py).
SEARCH_VECTOR = f"""
setweight(to_tsvector('{CONFIG}'::regconfig, left(coalesce(subject, ''), 1000)), 'A')
|| setweight(to_tsvector('{CONFIG}'::regconfig,
    left(coalesce(from_name, ''), 1000) || ' ' || left(coalesce(from_email, ''), 1000) || ' '
    || translate(left(coalesce(from_email, ''), 1000), '@.', '  ') || ' '
    || left(coalesce(recipients, ''), 8000) || ' '
    || translate(left(coalesce(recipients, ''), 8000), '@.<>', '    ')), 'B')
|| setweight(to_tsvector('{CONFIG}'::regconfig, left(coalesce(text_body, ''), 65536)), 'C')
"""


def upgrade() -> None:
    # Trusted extensions: the database owner may create them without being a superuser.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    op.execute(f"CREATE TEXT SEARCH CONFIGURATION {CONFIG} (COPY = pg_catalog.simple)")
    # word, hword, hword_part are the token types holding non-ASCII letters.
    op.execute(
        f"ALTER TEXT SEARCH CONFIGURATION {CONFIG} "
        "ALTER MAPPING FOR word, hword, hword_part WITH unaccent, simple"
    )
    op.add_column("messages", sa.Column("recipients", sa.Text(), nullable=True))
    op.execute(RECIPIENTS_BACKFILL)
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
    op.create_index(
        "ix_messages_tenant_date",
        "messages",
        ["tenant_id", sa.text("date DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_messages_folder_date",
        "messages",
        ["folder_id", sa.text("date DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_messages_addresses_trgm",
        "messages",
        ["tenant_id", "from_name", "from_email", "recipients"],
        postgresql_using="gin",
        postgresql_ops={
            "from_name": "gin_trgm_ops",
            "from_email": "gin_trgm_ops",
            "recipients": "gin_trgm_ops",
        },
    )


def downgrade() -> None:
    op.drop_index("ix_messages_addresses_trgm", table_name="messages")
    op.drop_index("ix_messages_folder_date", table_name="messages")
    op.drop_index("ix_messages_tenant_date", table_name="messages")
    op.drop_index("ix_messages_search", table_name="messages")
    op.drop_column("messages", "search_vector")
    op.drop_column("messages", "recipients")
    op.execute(f"DROP TEXT SEARCH CONFIGURATION {CONFIG}")
