"""B4: search latency on a large table, through the API vs the same SQL run in psql.

1M messages over 100 tenants, one of them holding 200k (quick: 100k and 20k), generated in
SQL by bench/search_table.py (Zipf-distributed words, 300 senders, 1000 days) into tenants,
accounts and folders made by the project's own services: delivering 1M messages through LMTP
would take hours. For each query the exact statement the search service sends is captured and
run in psql under EXPLAIN ANALYZE (planning + execution time); the API is timed end to end over
HTTP, one request at a time. Each pass runs every query once on each side; a pass's p95 is over
its queries.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from urllib.parse import quote, urlsplit

from bench.lab import Lab
from bench.report import Result
from bench.search_table import FOLDERS_PER_ACCOUNT, add_folders, generate, plan_nodes, searched
from bench.stats import Row, percentile, summarize

SIZES = {
    True: {"tenants": 100, "total": 100_000, "big": 20_000, "passes": 15},
    False: {"tenants": 100, "total": 1_000_000, "big": 200_000, "passes": 30},
}
QUERIES = [
    ("zyzzyva", "date"),  # a rare word
    ("lex1", "date"),  # a common word, newest first
    ("lex100", "date"),  # a medium word
    ("lex100 lex5 -lex7", "date"),
    ("from:sender12@", "date"),
    ("in:Projects after:2024-06-01", "date"),
    ("in:inbox after:2024-06-01", "date"),
    ("lex1", "relevance"),
]


def build(lab: Lab, size: dict):
    """The tenants (the big one first), their accounts and folders, then the messages."""
    tenants = [lab.tenant(f"b4t{i}") for i in range(size["tenants"])]
    for n, tenant in enumerate(tenants):
        account_id = lab.account(tenant.id, f"search{n}@example.test", "unused")
        with lab.ctx.work(tenant.id) as unit:
            add_folders(unit.session, account_id)
            unit.commit()
    per_tenant = (size["total"] - size["big"]) // (len(tenants) - 1)
    began = time.monotonic()
    counts = generate(
        lab.engine,
        [t.id for t in tenants],
        big=tenants[0].id,
        big_per_folder=size["big"] // FOLDERS_PER_ACCOUNT,
        per_folder=per_tenant // FOLDERS_PER_ACCOUNT,
        vacuum=True,
    )
    return tenants, counts, time.monotonic() - began


def captured_sql(lab: Lab, tenant_id: int, query: str, sort: str) -> str:
    """The search statement the service sends for `query`, with its parameters inlined."""
    import psycopg

    _, statement, parameters = searched(lab.ctx, tenant_id, query, sort)
    with psycopg.connect(lab.info.database_dsn) as conn:
        return psycopg.ClientCursor(conn).mogrify(statement, parameters)


def psql_times(lab: Lab, statements: list[str]) -> list[tuple[float, dict]]:
    """(planning + execution ms, plan) of each statement, EXPLAIN ANALYZEd in one psql session."""
    script = "SET plan_cache_mode = force_custom_plan;\n" + "".join(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {s};\n" for s in statements
    )
    done = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", lab.info.database_dsn],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {done.stderr[-500:]}")
    decoder, out, at, results = json.JSONDecoder(), done.stdout, 0, []
    while len(results) < len(statements):
        at = out.index("[", at)
        plan, at = decoder.raw_decode(out, at)
        top = plan[0]
        results.append((top["Planning Time"] + top["Execution Time"], top["Plan"]))
    return results


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    tenants, counts, load_s = build(lab, size)
    big, small = tenants[0], tenants[1]
    cases = [(t, q, s) for t in (big, small) for q, s in QUERIES]
    statements = [captured_sql(lab, t.id, q, s) for t, q, s in cases]
    api_ms: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    sql_ms: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    plans: dict[int, dict] = {}
    passes: list[tuple[list[float], list[float]]] = []
    with lab.api("waitress") as base:
        parts = urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

        def api_pass() -> list[float]:
            times = []
            for i, (tenant, query, sort) in enumerate(cases):
                began = time.perf_counter()
                conn.request(
                    "GET",
                    f"/api/sync/search?query={quote(query)}&sort={sort}",
                    headers=tenant.headers,
                )
                response = conn.getresponse()
                response.read()
                elapsed = (time.perf_counter() - began) * 1000
                if response.status != 200:
                    raise RuntimeError(f"search {query!r} answered {response.status}")
                times.append(elapsed)
                api_ms[i].append(elapsed)
            return times

        def sql_pass() -> list[float]:
            times = []
            for i, (elapsed, plan) in enumerate(psql_times(lab, statements)):
                times.append(elapsed)
                sql_ms[i].append(elapsed)
                plans[i] = plan
            return times

        api_pass(), sql_pass()  # warm both: caches and connections
        for values in api_ms.values():
            values.clear()
        for values in sql_ms.values():
            values.clear()
        for n in range(size["passes"]):
            if n % 2 == 0:
                a, s = api_pass(), sql_pass()
            else:
                s, a = sql_pass(), api_pass()
            passes.append((a, s))
        if lab.profiling:
            from bench.profiling import py_spy
            from bench.profiling import summarize as summarize_profile

            spy = py_spy("B4-search-api", lab.pids[base], 6)
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                api_pass()
            spy.wait()
            summarize_profile("B4-search-api")
        conn.close()

    half = len(QUERIES)
    rows = []
    for label, sl in (("big tenant", slice(0, half)), ("small tenant", slice(half, None))):
        rows.append(
            Row(
                "B4", f"search p95, {label}", "ms",
                summarize([percentile(a[sl], 95) for a, _ in passes]),
                "same SQL in psql (EXPLAIN ANALYZE)",
                summarize([percentile(s[sl], 95) for _, s in passes]),
            )
        )  # fmt: skip
    rows.append(
        Row(
            "B4", "search p95 (API)", "ms", summarize([percentile(a, 95) for a, _ in passes]),
            goal=("<=", 50), goal_on="value",
        )
    )  # fmt: skip
    # What the API adds to its own SQL, per query: p95 through HTTP minus p95 in psql.
    overhead = [percentile(api_ms[i], 95) - percentile(sql_ms[i], 95) for i in api_ms]
    worst = max(range(len(cases)), key=lambda i: overhead[i])
    rows.append(
        Row(
            "B4", "API p95 - SQL p95, worst query", "ms", summarize([overhead[worst]]),
            goal=("<=", 5), goal_on="value",
            note=f"{cases[worst][1]} ({'big' if cases[worst][0] is big else 'small'} tenant); "
            f"median query {percentile(overhead, 50):.1f} ms",
        )
    )  # fmt: skip
    slowest = max(max(v) for v in api_ms.values())
    rows.append(
        Row(
            "B4",
            "slowest search (API)",
            "ms",
            summarize([slowest]),
            goal=("<=", 1000),
            goal_on="value",
        )
    )
    unindexed = []
    lines = [
        "| tenant | query | sort | API p50 / p95 ms | SQL p50 / p95 ms | plan |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, (tenant, query, sort) in enumerate(cases):
        nodes = list(plan_nodes(plans[i]))
        seq = [
            n
            for n in nodes
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "messages"
        ]
        indexes = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
        if seq or not indexes:
            unindexed.append(query)
        who = "big" if tenant is big else "small"
        lines.append(
            f"| {who} | `{query}` | {sort} | {percentile(api_ms[i], 50):.1f} / "
            f"{percentile(api_ms[i], 95):.1f} | {percentile(sql_ms[i], 50):.1f} / "
            f"{percentile(sql_ms[i], 95):.1f} | {', '.join(indexes)}{' SEQ SCAN' if seq else ''} |"
        )
    rows.append(
        Row(
            "B4", "plans not using an index", "plans", summarize([len(unindexed)]),
            goal=("<=", 0), goal_on="value", note=", ".join(unindexed),
        )
    )  # fmt: skip
    corpus = {
        "messages": sum(counts.values()),
        "tenants": len(counts),
        "big_tenant": counts[big.id],
        "small_tenant": counts[small.id],
        "generated_in_s": round(load_s, 1),
    }
    notes = [
        f"{size['passes']} passes after a warm-up; each pass runs the {len(QUERIES)} queries "
        "for the big and a small tenant once through the API and once in psql.",
        "SQL time = EXPLAIN ANALYZE's planning + execution time of the service's own statement "
        "(plan_cache_mode = force_custom_plan, as the service sets it); API time = HTTP round "
        "trip on a kept-alive connection (auth, rate limit, folder list, search, JSON).",
    ]
    return Result("B4", rows, corpus=corpus, notes=notes, details="\n".join(lines) + "\n")
