"""Search plans on a realistically large table: every case reads messages through an index.

A database of the test's own gets 210k messages over two tenants (one holds 81%), generated
in SQL by the benchmark's generator (bench/search_table.py: Zipf-distributed words, 300
senders, 1000 days, five folders per account), then ANALYZE. Each case runs the search
service, captures the exact statement it sent, and EXPLAINs that statement with its parameters
under default planner settings. Takes about 25 s here (most of it the insert maintaining the
GIN indexes).
"""

from __future__ import annotations

from sqlalchemy import text

from app.services.tenants import create_tenant
from bench.search_table import add_folders, generate, plan_nodes, searched
from tests.services.search_corpus import Mailboxes

BIG, SMALL = 8500, 4000  # messages per folder: 4 accounts x 5 folders, and 2 x 5

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


def build(ctx):
    """The 210k messages, through the project's services for tenants, accounts and folders."""
    tenants = {}
    with ctx.work() as unit:
        for name in ("big", "small"):
            tenants[name] = create_tenant(unit, f"plans-{name}").id
    for name, accounts in (("big", 4), ("small", 2)):
        mail = Mailboxes(ctx, tenants[name])
        for n in range(accounts):
            account = mail.account(f"{name}{n}@example.test")
            with ctx.work(tenants[name]) as unit:
                add_folders(unit.session, account, "Projects" if n == 0 else f"Projects {n}")
                unit.commit()
    engine = ctx.engine
    counts = generate(
        engine, list(tenants.values()), big=tenants["big"], big_per_folder=BIG, per_folder=SMALL
    )
    with engine.connect() as connection:
        changed = connection.execute(
            text(
                "SELECT name FROM pg_settings WHERE category LIKE 'Query Tuning%' "
                "AND source NOT IN ('default', 'override')"
            )
        ).all()
    assert sum(counts.values()) >= 200_000
    assert counts[tenants["big"]] / sum(counts.values()) >= 0.8
    assert changed == [], "planner settings must be the defaults"
    return tenants


def explained(ctx, tenant_id: int, query: str, sort: str) -> dict:
    """EXPLAIN ANALYZE of the statement search() sends for `query`, with its parameters."""
    page, statement, parameters = searched(ctx, tenant_id, query, sort)
    engine = ctx.engine
    assert page.hits, f"{query!r} must match something"
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        (plan,) = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
        ).scalar_one()
    return plan


def test_plans_use_the_indexes(fresh_ctx):
    tenants = build(fresh_ctx)
    problems = []
    for tenant in ("big", "small"):
        for query, sort, indexes in CASES:
            plan = explained(fresh_ctx, tenants[tenant], query, sort)
            nodes = list(plan_nodes(plan["Plan"]))
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
    assert not problems, "\n".join(problems)
