"""The migration that brings the running storage totals counts what was stored before it."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from app.migrations import alembic_config
from app.services import usage
from tests.conftest import make_tenant_user
from tests.mailbox import add_account, message


def test_upgrading_counts_what_is_stored_and_the_triggers_take_over(fresh_ctx, mailbox):
    from datetime import timedelta

    from app.services.compose import DraftContent, create_draft, send_draft
    from app.services.sync import Syncer, SyncLimits

    ctx = fresh_ctx
    url = ctx.settings.database_url
    users = [make_tenant_user(ctx, "m"), make_tenant_user(ctx, "n")]
    mailbox.append("INBOX", message(body="stored before the upgrade " * 50))
    syncer = Syncer(
        ctx, SyncLimits(max_messages=None, max_seconds=None, flag_scan_interval=timedelta(0))
    )
    accounts = {}
    for user in users:
        account_id = accounts[user.tenant_id] = add_account(ctx, user.tenant_id, mailbox)
        syncer.sync_account(account_id)
        with ctx.work(user.tenant_id) as unit:
            content = DraftContent(
                account_id, [mailbox.email], [], [], "s", "x" * 3000, None, None, []
            )
            send_draft(unit, create_draft(unit, content).draft.id, None)
            create_draft(unit, content)
    with ctx.sessions() as s:
        before = {u.tenant_id: usage.storage_bytes(s, u.tenant_id) for u in users}
        assert all(before[u.tenant_id] == usage.recount(s, u.tenant_id) > 3000 for u in users)

    # Back to the schema without totals, then up again: the upgrade counts what is there.
    ctx.engine.dispose()
    command.downgrade(alembic_config(url), "0008")  # to before 0009, whatever follows it
    with ctx.engine.connect() as connection:
        assert connection.scalar(text("SELECT to_regclass('tenant_usage')")) is None
    command.upgrade(alembic_config(url), "head")
    with ctx.sessions() as s:
        assert {u.tenant_id: usage.storage_bytes(s, u.tenant_id) for u in users} == before

    # And the triggers are back: a new draft moves the total.
    tenant = users[0].tenant_id
    with ctx.work(tenant) as unit:
        content = DraftContent(accounts[tenant], [], [], [], "t", "y" * 1000, None, None, [])
        create_draft(unit, content)
    with ctx.sessions() as s:
        assert usage.storage_bytes(s, tenant) == usage.recount(s, tenant) == before[tenant] + 1000
