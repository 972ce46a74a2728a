"""drafts and the outbox

Drafts (with their attachment bytes in draft_attachments) and the outbox: one entry per sent
draft, holding the MIME bytes built once, the delivery state machine (queued, sending, sent,
failed, uncertain), the dot_sent_at marker that tells a dead worker's half-sent entry (safe to
send again) from one the server may have accepted (uncertain), and the Sent-copy state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 22:53:12.564614
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("to_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cc_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("bcc_addrs", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("in_reply_to", sa.BigInteger(), nullable=True),
        sa.Column("in_reply_to_header", sa.Text(), nullable=True),
        sa.Column("references_header", sa.Text(), nullable=True),
        sa.Column("attachments", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=8), server_default="draft", nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("state IN ('draft', 'sent')", name="state"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["in_reply_to"], ["messages.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_drafts_account_id"), "drafts", ["account_id"], unique=False)
    op.create_index(op.f("ix_drafts_tenant_id"), "drafts", ["tenant_id"], unique=False)
    op.create_table(
        "draft_attachments",
        sa.Column("draft_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("draft_id", "position"),
    )
    op.create_index(
        op.f("ix_draft_attachments_tenant_id"), "draft_attachments", ["tenant_id"], unique=False
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("draft_id", sa.BigInteger(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=10), server_default="queued", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("envelope_from", sa.Text(), nullable=False),
        sa.Column("recipients", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("mime", sa.LargeBinary(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dot_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("smtp_reply", sa.Text(), nullable=True),
        sa.Column("sent_copy", sa.String(length=8), server_default="none", nullable=False),
        sa.Column("sent_copy_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sent_copy_error", sa.Text(), nullable=True),
        sa.Column("resolved_by", sa.String(length=8), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.CheckConstraint("sent_copy IN ('none', 'pending', 'done', 'failed')", name="sent_copy"),
        sa.CheckConstraint(
            "state IN ('queued', 'sending', 'sent', 'failed', 'uncertain')", name="state"
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("draft_id"),
    )
    op.create_index(op.f("ix_outbox_account_id"), "outbox", ["account_id"], unique=False)
    op.create_index(
        "ix_outbox_active",
        "outbox",
        ["state", "next_attempt_at"],
        unique=False,
        postgresql_where="state IN ('queued', 'sending')",
    )
    op.create_index(op.f("ix_outbox_tenant_id"), "outbox", ["tenant_id"], unique=False)
    op.create_index("ix_outbox_tenant_state", "outbox", ["tenant_id", "state", "id"], unique=False)
    op.create_index(
        "ux_outbox_idempotency", "outbox", ["tenant_id", "idempotency_key"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_outbox_idempotency", table_name="outbox")
    op.drop_index("ix_outbox_tenant_state", table_name="outbox")
    op.drop_index(op.f("ix_outbox_tenant_id"), table_name="outbox")
    op.drop_index(
        "ix_outbox_active", table_name="outbox", postgresql_where="state IN ('queued', 'sending')"
    )
    op.drop_index(op.f("ix_outbox_account_id"), table_name="outbox")
    op.drop_table("outbox")
    op.drop_index(op.f("ix_draft_attachments_tenant_id"), table_name="draft_attachments")
    op.drop_table("draft_attachments")
    op.drop_index(op.f("ix_drafts_tenant_id"), table_name="drafts")
    op.drop_index(op.f("ix_drafts_account_id"), table_name="drafts")
    op.drop_table("drafts")
