"""Search plans on a realistically large table: every case reads messages through an index.

A database of the test's own gets 210k messages over two tenants (one holds 81%), generated
in SQL (INSERT ... SELECT generate_series: Zipf-distributed words, 300 senders, 1000 days,
five folders per account), then ANALYZE. Each case runs the search service, captures the exact
statement it sent, and EXPLAINs that statement with its parameters under default planner
settings. Takes about 25 s here (most of it the insert maintaining the GIN indexes).
"""

from __future__ import annotations

from sqlalchemy import event, text

from app.db import make_engine, make_sessionmaker
from app.services.tenants import create_tenant
from tests.services.search_corpus import Mailboxes

FOLDERS = (("INBOX", "inbox"), ("Sent", "sent"), ("Archive/2024", None), ("Trash", "trash"))
BIG, SMALL = 8500, 4000  # messages per folder: 4 accounts x 5 folders, and 2 x 5

GENERATE = """
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
"""

# (query, the index it should use for it) for both tenants.
CASES = [
    ("zyzzyva", "date", {"ix_messages_search"}),  # a rare word
    ("lex1", "date", {"ix_messages_tenant_date"}),  # a common word, newest first
    # A medium word (5%): a join to folders once made this read the whole tenant (200 ms).
    ("lex100", "date", {"ix_messages_tenant_date", "ix_messages_search"}),
    ("lex100 lex5 -lex7", "date", {"ix_messages_tenant_date", "ix_messages_search"}),
    ("from:sender12@", "date", {"ix_messages_tenant_date", "ix_messages_addresses_trgm"}),
    ("in:Projects after:2024-06-01", "date", {"ix_messages_folder_date"}),  # one folder
    ("in:inbox after:2024-06-01", "date", {"ix_messages_tenant_date", "ix_messages_folder_date"}),
    ("lex1", "relevance", {"ix_messages_tenant_date"}),
]


def build(env: dict[str, str]):
    """The 210k messages, through the project's models for tenants, accounts and folders."""
    engine = make_engine(env["DATABASE_URL"])
    sessions = make_sessionmaker(engine)
    tenants = {}
    with sessions() as session:
        for name in ("big", "small"):
            tenants[name] = create_tenant(session, f"plans-{name}").id
        session.commit()
    for name, accounts in (("big", 4), ("small", 2)):
        mail = Mailboxes(sessions, env, tenants[name])
        for n in range(accounts):
            account = mail.account(f"{name}{n}@example.test")
            for i, (folder, role) in enumerate(FOLDERS):
                mail.folder(account, folder, role, validity=1000 + account * 10 + i)
            # The only folder of that name in the tenant: in: names a single folder.
            mail.folder(account, "Projects" if n == 0 else f"Projects {n}", validity=99)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO message_raws (account_id, sha256, data, tenant_id) "
                "SELECT id, '\\x00', '\\x00', tenant_id FROM accounts"
            )
        )
        connection.execute(text(GENERATE), {"big": tenants["big"], "big_n": BIG, "small_n": SMALL})
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
        counts = dict(
            connection.execute(text("SELECT tenant_id, count(*) FROM messages GROUP BY 1")).all()
        )
        changed = connection.execute(
            text(
                "SELECT name FROM pg_settings WHERE category LIKE 'Query Tuning%' "
                "AND source NOT IN ('default', 'override')"
            )
        ).all()
    assert sum(counts.values()) >= 200_000
    assert counts[tenants["big"]] / sum(counts.values()) >= 0.8
    assert changed == [], "planner settings must be the defaults"
    return engine, sessions, tenants


def explained(engine, sessions, env, tenant_id: int, query: str, sort: str) -> dict:
    """EXPLAIN ANALYZE of the statement search() sends for `query`, with its parameters."""
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        page = Mailboxes(sessions, env, tenant_id).search(query, sort=sort)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert page.hits, f"{query!r} must match something"
    (statement, parameters), *_ = [s for s in statements if s[0].startswith("SELECT messages.")]
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        (plan,) = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
        ).scalar_one()
    return plan


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_plans_use_the_indexes(fresh_migrated_env):
    engine, sessions, tenants = build(fresh_migrated_env)
    problems = []
    try:
        for tenant in ("big", "small"):
            for query, sort, indexes in CASES:
                plan = explained(engine, sessions, fresh_migrated_env, tenants[tenant], query, sort)
                nodes = list(_nodes(plan["Plan"]))
                summary = " > ".join(
                    n["Node Type"] + (f" [{n['Index Name']}]" if "Index Name" in n else "")
                    for n in nodes
                )
                print(f"{tenant} {query!r} {sort}: {plan['Execution Time']:.1f} ms: {summary}")
                on_messages = [n for n in nodes if n.get("Relation Name") == "messages"]
                if any(n["Node Type"] == "Seq Scan" for n in on_messages):
                    problems.append(f"{tenant} {query!r}: Seq Scan on messages: {summary}")
                # Index nodes name their index (and no relation): the statement reads only
                # messages, so every index in it is one of messages'.
                if not {n.get("Index Name") for n in nodes} & indexes:
                    problems.append(f"{tenant} {query!r}: none of {indexes}: {summary}")
    finally:
        engine.dispose()
    assert not problems, "\n".join(problems)
