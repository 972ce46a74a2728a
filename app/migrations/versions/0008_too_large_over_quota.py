"""messages stored headers-only: too_large and over_quota

A message above MAX_MESSAGE_BYTES (as the server says, or as it turns out while it is read)
is stored with its header only and `too_large`; `over_quota` marks one stored headers-only
because its tenant was over its storage quota when it was synced. Both false for everything
stored before: those were stored whole. A constant default is a metadata-only change in
PostgreSQL (no table rewrite), so the upgrade is quick on a large table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("too_large", "over_quota"):
        op.add_column(
            "messages",
            sa.Column(column, sa.Boolean(), nullable=False, server_default=sa.false()),
        )


def downgrade() -> None:
    for column in ("over_quota", "too_large"):
        op.drop_column("messages", column)
