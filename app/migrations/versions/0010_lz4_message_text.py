"""lz4 compression for the parsed text of stored messages

The `messages` row of a long message carries its text, its sanitised HTML and its decoded
headers, TOASTed with PostgreSQL's default pglz, which spends a lot of CPU for little gain
on text this size. lz4 (already used for the raw bytes, migration 0007) is several times
cheaper. Measured in the B1 benchmark's initial sync (2000 messages, one process, CPU time
of the benchmark's PostgreSQL backends): 2.34 s with pglz, 2.06 s with lz4. Applies to
values written from now on; old values stay readable as they are.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 22:10:00.000000
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = ("text_body", "html_body", "headers")


def upgrade() -> None:
    for column in COLUMNS:
        op.execute(f"ALTER TABLE messages ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    for column in COLUMNS:
        op.execute(f"ALTER TABLE messages ALTER COLUMN {column} SET COMPRESSION DEFAULT")
