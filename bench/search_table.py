"""A large search corpus generated in SQL: B4's million messages, and the plan test's 210k.

Delivering that much mail through LMTP and syncing it would take hours; one INSERT ... SELECT
generate_series writes it straight into `messages`. Each row reads like mail to the search: a
subject of 5 and a body of 25 words drawn Zipf-like from lex1..lex2999 (lex1 is in most
messages, lex100 in a few percent), a rare word (zyzzyva, about 1 in 10,000), 300 senders over
7 domains, dates spread over 1000 days from 2022, some seen, flagged or with attachments. The
caller makes the tenants and accounts through the project's services, and their folders with
add_folders(); generate() then fills every folder of the tenants it is given.

Also here, for both users: the statement search() sends (to EXPLAIN it) and a plan's nodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from app.context import ServiceContext
from app.models import Folder
from app.services.search import SearchPage, search

FOLDERS = (("INBOX", "inbox"), ("Sent", "sent"), ("Archive/2024", None), ("Trash", "trash"))
FOLDERS_PER_ACCOUNT = len(FOLDERS) + 1  # and the one add_folders() names

_RAWS = """
INSERT INTO message_raws (account_id, sha256, data, tenant_id)
SELECT id, '\\x00', '\\x00', tenant_id FROM accounts WHERE tenant_id = ANY(:tenants)
"""

_MESSAGES = """
INSERT INTO messages (tenant_id, account_id, folder_id, uidvalidity, uid, seen, flagged,
    answered, draft, keywords, internal_date, size, raw_id, date, subject, from_name,
    from_email, to_addrs, cc_addrs, bcc_addrs, reply_to, "references", headers, text_body,
    attachments, has_attachments, recipients)
SELECT f.tenant_id, f.account_id, f.id, f.uidvalidity, g, g % 3 = 0, g % 17 = 0, false, false,
    '{}', d, 2000 + g % 5000, r.id, d,
    (SELECT string_agg('lex' || floor(power(3000, random()))::int, ' ')
     FROM generate_series(1, 5) WHERE g > 0),
    'Sender ' || (g * 7919 % 300), 'sender' || (g * 7919 % 300) || '@corp' || (g % 7) || '.test',
    '[]', '[]', '[]', '[]', '{}', '[]',
    (SELECT string_agg('lex' || floor(power(3000, random()))::int, ' ')
     FROM generate_series(1, 25) WHERE g > 0)
    || CASE WHEN (g * 31 + f.id) % 9973 = 0 THEN ' zyzzyva' ELSE '' END,
    '[]', g % 11 = 0, 'Rcpt ' || (g % 50) || ' <rcpt' || (g % 50) || '@example.test>'
FROM folders f
JOIN message_raws r ON r.account_id = f.account_id
CROSS JOIN LATERAL generate_series(1, CASE WHEN f.tenant_id = :big THEN :big_n ELSE :small_n END) g
CROSS JOIN LATERAL (
    SELECT timestamptz '2022-01-01' + ((g * 7 + f.id * 13) % 1000) * interval '1 day'
        + (g * 37 % 86400) * interval '1 second' AS d
) dates
WHERE f.tenant_id = ANY(:tenants)
"""


def add_folders(session: Session, account_id: int, projects: str = "Projects") -> None:
    """FOLDERS for the account, and `projects`: name it so that it is the only folder of that
    name in the tenant, so that `in:<projects>` names a single folder."""
    for i, (name, role) in enumerate(FOLDERS):
        session.add(
            Folder(
                account_id=account_id, name=name, remote_name=name, role=role, uidvalidity=1000 + i
            )
        )
    session.add(Folder(account_id=account_id, name=projects, remote_name=projects, uidvalidity=99))


def generate(
    engine: Engine,
    tenants: Sequence[int],
    *,
    big: int,
    big_per_folder: int,
    per_folder: int,
    vacuum: bool = False,
) -> dict[int, int]:
    """Fill every folder of `tenants`: big_per_folder messages in each of tenant `big`'s,
    per_folder in the others'. Then ANALYZE (VACUUM ANALYZE with vacuum: the steady state of a
    table autovacuum has seen, for timings; without, the plans of a freshly loaded one).
    Returns the messages per tenant."""
    ids = list(tenants)
    with engine.begin() as connection:
        # One raw message per account: the rows need a raw_id; search never reads it.
        connection.execute(text(_RAWS), {"tenants": ids})
        connection.execute(
            text(_MESSAGES),
            {"big": big, "big_n": big_per_folder, "small_n": per_folder, "tenants": ids},
        )
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(text("VACUUM ANALYZE" if vacuum else "ANALYZE"))
        counted = connection.execute(
            text("SELECT tenant_id, count(*) FROM messages WHERE tenant_id = ANY(:t) GROUP BY 1"),
            {"t": ids},
        )
        return dict(counted.all())


def searched(
    ctx: ServiceContext, tenant_id: int, query: str, sort: str
) -> tuple[SearchPage, str, Any]:
    """search() as the tenant's API requests run it, with the statement it sent to read the
    messages and that statement's parameters (what EXPLAIN needs to plan it the same way)."""
    statements: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(ctx.engine, "before_cursor_execute", capture)
    try:
        with ctx.work(tenant_id) as unit:
            page = search(unit, query, sort=sort)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", capture)
    statement, parameters = next(s for s in statements if s[0].startswith("SELECT messages."))
    return page, statement, parameters


def plan_nodes(plan: dict) -> Iterator[dict]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, the top one first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)
