"""folders, messages and raw bytes for IMAP sync

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:28:08.846883
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("remote_name", sa.Text(), nullable=False),
        sa.Column("delimiter", sa.String(length=4), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("uidnext", sa.BigInteger(), nullable=True),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.Column("last_flag_scan_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uidvalidity_resets", sa.Integer(), server_default="0", nullable=False),
        sa.Column("messages_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unread_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_index(op.f("ix_folders_account_id"), "folders", ["account_id"], unique=False)
    op.create_index(op.f("ix_folders_tenant_id"), "folders", ["tenant_id"], unique=False)
    op.create_table(
        "message_raws",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "sha256"),
    )
    op.create_index(op.f("ix_message_raws_tenant_id"), "message_raws", ["tenant_id"], unique=False)
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("folder_id", sa.BigInteger(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=True),
        sa.Column("seen", sa.Boolean(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=False),
        sa.Column("draft", sa.Boolean(), nullable=False),
        sa.Column("keywords", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("internal_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw_id", sa.BigInteger(), nullable=False),
        sa.Column("date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("from_name", sa.Text(), nullable=True),
        sa.Column("from_email", sa.Text(), nullable=True),
        sa.Column("to_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cc_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("bcc_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reply_to", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("message_id_header", sa.Text(), nullable=True),
        sa.Column("in_reply_to", sa.Text(), nullable=True),
        sa.Column("references", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("attachments", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("has_attachments", sa.Boolean(), nullable=False),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["folder_id"], ["folders.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["raw_id"],
            ["message_raws.id"],
        ),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "uidvalidity", "uid"),
    )
    op.create_index(op.f("ix_messages_account_id"), "messages", ["account_id"], unique=False)
    op.create_index("ix_messages_raw_id", "messages", ["raw_id"], unique=False)
    op.create_index(op.f("ix_messages_tenant_id"), "messages", ["tenant_id"], unique=False)
    op.add_column("accounts", sa.Column("sync_job_id", sa.String(length=64), nullable=True))
    op.add_column(
        "accounts", sa.Column("sync_started_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "accounts", sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "accounts", sa.Column("sync_folders_done", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "accounts",
        sa.Column("sync_folders_total", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column("sync_messages_synced", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column("sync_messages_total", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("accounts", "sync_messages_total")
    op.drop_column("accounts", "sync_messages_synced")
    op.drop_column("accounts", "sync_folders_total")
    op.drop_column("accounts", "sync_folders_done")
    op.drop_column("accounts", "last_synced_at")
    op.drop_column("accounts", "sync_started_at")
    op.drop_column("accounts", "sync_job_id")
    op.drop_index(op.f("ix_messages_tenant_id"), table_name="messages")
    op.drop_index("ix_messages_raw_id", table_name="messages")
    op.drop_index(op.f("ix_messages_account_id"), table_name="messages")
    op.drop_table("messages")
    op.drop_index(op.f("ix_message_raws_tenant_id"), table_name="message_raws")
    op.drop_table("message_raws")
    op.drop_index(op.f("ix_folders_tenant_id"), table_name="folders")
    op.drop_index(op.f("ix_folders_account_id"), table_name="folders")
    op.drop_table("folders")
