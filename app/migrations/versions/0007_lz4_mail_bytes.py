"""lz4 compression for stored mail bytes

Raw messages (and the outbox's and drafts' bytes) are mostly base64 attachments that barely
compress; PostgreSQL's default pglz spends a lot of CPU trying. lz4 gives up fast: in the B1
benchmark (bench/, 2000 messages) inserting the raws went from 1.17 s to 0.31 s and the whole
initial sync from 222 to 254 messages a second. Applies to values written from now on; old
values stay readable as they are. Debian's PostgreSQL is built with lz4.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 23:58:00.000000
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = (("message_raws", "data"), ("outbox", "mime"), ("draft_attachments", "data"))


def upgrade() -> None:
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION DEFAULT")
