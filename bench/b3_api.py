"""B3: API throughput (wrk, 32 connections) and latency at half of saturation (open loop).

Three servers run side by side on the same database: the service under Waitress as
`emailservice serve` runs it, the same app under gunicorn (gthread) with the same process and
thread counts (1 x 8), and a bare WSGI hello on Waitress with 8 threads: what the server
alone can do here. Endpoints: the account list, a folder's message list, one message, search.
"""

from __future__ import annotations

import json
import urllib.request

from bench.corpus import WORDS
from bench.lab import Lab
from bench.loadgen import open_loop, wrk
from bench.mailboxes import synced_account
from bench.report import Result
from bench.stats import Row, failed, summarize

FOLDERS = ["INBOX", "Archive", "Sent", "Lists/Dev", "Projects"]
SIZES = {
    True: {"messages": 2000, "reps": 3, "wrk_s": 3, "open_s": 4},
    False: {"messages": 10_000, "reps": 5, "wrk_s": 10, "open_s": 15},
}


def endpoints(base: str, tenant, account_id: int) -> dict[str, str]:
    request = urllib.request.Request(
        f"{base}/api/accounts/{account_id}/messages?folder=INBOX&limit=1", headers=tenant.headers
    )
    with urllib.request.urlopen(request) as response:
        message_id = json.loads(response.read())["items"][0]["id"]
    return {
        "GET /api/accounts": "/api/accounts",
        "message list": f"/api/accounts/{account_id}/messages?folder=INBOX",
        "message detail": f"/api/messages/{message_id}",
        # A word in about one message in ten (WORDS is Zipf-ranked), newest first.
        "search": f"/api/sync/search?query={WORDS[1500]}",
    }


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    tenant, account_id, box = synced_account(lab, "b1", FOLDERS, size["messages"])
    rows: list[Row] = []
    notes = [
        "Each server: 1 process x 8 threads (WAITRESS_THREADS=8; gunicorn --workers 1 "
        "--worker-class gthread --threads 8), JSON request logs on (written by a thread of "
        "their own in both), rate limits on (huge).",
        "wrk -t2 -c32; the open-loop rate is half of the Waitress app's saturation for that "
        "endpoint, the same rate for gunicorn.",
    ]
    with (
        lab.api("waitress") as waitress,
        lab.api("gunicorn") as gunicorn,
        lab.api("hello") as hello,
    ):
        paths = endpoints(waitress, tenant, account_id)
        hello_rps: list[float] = []
        for name, path in paths.items():
            rps = {"waitress": [], "gunicorn": []}
            p99 = {"waitress": [], "gunicorn": []}
            p50 = {"waitress": [], "gunicorn": []}
            errors = 0
            kinds: list[str] = []
            for rep in range(size["reps"]):
                order = [("waitress", waitress), ("gunicorn", gunicorn)]
                for server, base in order if rep % 2 == 0 else order[::-1]:
                    result = wrk(base + path, tenant.headers, size["wrk_s"])
                    errors += result.errors
                    if result.errors:
                        kinds.append(f"{server} wrk: {result.output.strip()[-300:]}")
                    rps[server].append(result.rps)
                rate = max(5.0, min(rps["waitress"]) / 2)
                for server, base in order if rep % 2 == 0 else order[::-1]:
                    latency = open_loop(base + path, tenant.headers, rate, size["open_s"])
                    errors += latency.errors
                    if latency.errors:
                        kinds.append(f"{server} open loop: {latency.kinds}")
                    p99[server].append(latency.p(99))
                    p50[server].append(latency.p(50))
                if name == "GET /api/accounts":
                    hello_rps.append(wrk(hello + "/", {}, size["wrk_s"]).rps)
            if errors:
                rows.append(
                    failed("B3", name, f"{errors} errors or non-2xx answers: {'; '.join(kinds)}")
                )
                continue
            rows.append(
                Row(
                    "B3", f"{name} throughput", "req/s", summarize(rps["waitress"]),
                    "gunicorn", summarize(rps["gunicorn"]), goal=(">=", 1.0),
                )
            )  # fmt: skip
            rows.append(
                Row(
                    "B3", f"{name} p99 at half saturation", "ms", summarize(p99["waitress"]),
                    "gunicorn", summarize(p99["gunicorn"]), goal=("<=", 50), goal_on="value",
                    extra={"p50_ms": p50},
                )
            )  # fmt: skip
        if lab.profiling:
            from bench.profiling import py_spy
            from bench.profiling import summarize as summarize_profile

            for name, path in paths.items():
                label = "B3-" + name.replace("/", "_").replace(" ", "-")
                spy = py_spy(label, lab.pids[waitress], size["wrk_s"] + 1)
                wrk(waitress + path, tenant.headers, size["wrk_s"])
                spy.wait()
                summarize_profile(label)
        rows.append(
            Row(
                "B3", "GET /api/accounts throughput", "req/s",
                rows[0].project if rows and rows[0].error is None else summarize([0]),
                "bare WSGI hello (Waitress)", summarize(hello_rps),
                note="ceiling of the server on this machine",
            )
        )  # fmt: skip
    corpus = dict(box.corpus, accounts=1)
    return Result("B3", rows, corpus=corpus, notes=notes)
