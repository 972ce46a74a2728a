"""tenant_usage: each tenant's stored bytes, a running total kept by triggers

The storage quota (TENANT_MAX_STORAGE_BYTES) is checked on every draft save and send, and the
sync asks once per batch whether a tenant is over it: a sum over every raw message of the
tenant would be a scan of gigabytes each time. Instead PostgreSQL keeps one row per tenant up
to date in the same transaction as each change, whoever makes it (the sync, the API, a cascade
from a deleted account):

- message_raws: + / - the uncompressed length of `data` (each raw once: raws are stored once
  per account and SHA-256);
- drafts: + / - `size` (bodies and attachment bytes; an update adds the difference);
- outbox: + / - the length of `mime`.

INSERT and DELETE triggers are per statement, over their transition tables: a batch of 200
raws, or the cascade of a deleted account's 100 000 raws, is one update of the tenant's row,
not one per row. (octet_length of a stored value reads its length from the TOAST pointer
without decompressing it.) Updates of the counted column are rare and per row.

Revision ID: 0009
Revises: 0007 (the lead renumbers: it follows 0008 once both are merged)
Create Date: 2026-12-07 12:10:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# table -> the SQL expression of a row's counted bytes; {row} is "" over a transition table,
# "NEW." or "OLD." in a row trigger.
COUNTED = {
    "message_raws": "octet_length({row}data)",
    "drafts": "{row}size",
    "outbox": "octet_length({row}mime)",
}
COLUMN = {"message_raws": "data", "drafts": "size", "outbox": "mime"}

# Adds (tenant_id, delta) pairs to tenant_usage. Only tenants that still exist: while a
# tenant itself is deleted its usage row goes with it and must not come back.
APPLY = """
    INSERT INTO tenant_usage AS u (tenant_id, storage_bytes)
    SELECT d.tenant_id, sum(d.delta) FROM ({deltas}) AS d
    JOIN tenants t ON t.id = d.tenant_id
    GROUP BY d.tenant_id
    HAVING sum(d.delta) <> 0
    ON CONFLICT (tenant_id)
    DO UPDATE SET storage_bytes = u.storage_bytes + excluded.storage_bytes
"""


def _functions(table: str) -> str:
    size, new, old = (COUNTED[table].format(row=row) for row in ("", "NEW.", "OLD."))
    added = APPLY.format(deltas=f"SELECT tenant_id, ({size})::bigint AS delta FROM new_rows")
    removed = APPLY.format(deltas=f"SELECT tenant_id, -({size})::bigint AS delta FROM old_rows")
    changed = APPLY.format(
        deltas=f"SELECT NEW.tenant_id AS tenant_id, "
        f"coalesce(({new})::bigint, 0) - coalesce(({old})::bigint, 0) AS delta"
    )
    return f"""
CREATE FUNCTION usage_{table}_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {added}; RETURN NULL; END $$;
CREATE FUNCTION usage_{table}_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {removed}; RETURN NULL; END $$;
CREATE FUNCTION usage_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN {changed}; RETURN NULL; END $$;
CREATE TRIGGER usage_added AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION usage_{table}_added();
CREATE TRIGGER usage_removed AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION usage_{table}_removed();
CREATE TRIGGER usage_changed AFTER UPDATE OF {COLUMN[table]} ON {table}
    FOR EACH ROW WHEN (OLD.{COLUMN[table]} IS DISTINCT FROM NEW.{COLUMN[table]})
    EXECUTE FUNCTION usage_{table}_changed();
"""


def upgrade() -> None:
    op.create_table(
        "tenant_usage",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("storage_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    # What is stored already, counted once; the triggers keep it from here on (the table is
    # locked against writes meanwhile, so nothing is counted twice or missed).
    op.execute("LOCK TABLE message_raws, drafts, outbox IN SHARE MODE")
    op.execute(
        """
        INSERT INTO tenant_usage (tenant_id, storage_bytes)
        SELECT tenant_id, sum(bytes) FROM (
            SELECT tenant_id, octet_length(data)::bigint AS bytes FROM message_raws
            UNION ALL SELECT tenant_id, size::bigint FROM drafts
            UNION ALL SELECT tenant_id, octet_length(mime)::bigint FROM outbox
        ) AS stored GROUP BY tenant_id
        """
    )
    for table in COUNTED:
        op.execute(_functions(table))


def downgrade() -> None:
    for table in COUNTED:
        for trigger in ("added", "removed", "changed"):
            op.execute(f"DROP TRIGGER usage_{trigger} ON {table}")
            op.execute(f"DROP FUNCTION usage_{table}_{trigger}()")
    op.drop_table("tenant_usage")
