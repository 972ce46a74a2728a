"""message changes waiting for IMAP write-back

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 21:48:42.356044
"""

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_changes",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("seen", sa.Boolean(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=True),
        sa.Column("target_folder_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=8), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["target_folder_id"], ["folders.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_message_changes_account_state",
        "message_changes",
        ["account_id", "state", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_message_changes_message_id"), "message_changes", ["message_id"], unique=False
    )
    op.create_index(
        op.f("ix_message_changes_tenant_id"), "message_changes", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_message_changes_tenant_id"), table_name="message_changes")
    op.drop_index(op.f("ix_message_changes_message_id"), table_name="message_changes")
    op.drop_index("ix_message_changes_account_state", table_name="message_changes")
    op.drop_table("message_changes")
