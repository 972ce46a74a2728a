"""B1: initial sync of one account, end to end (fetch, parse, store, index), in msgs/s.

Two instants per run: *readable*, when the sync returns (every message listed, its summary and
raw bytes stored), and *searchable*, when no message of the account is left without its search
vector (polled after the sync returns). The vectors are computed as in production: the sync
stores rows without them and enqueues the indexing job at the end of its run, which a real
`emailservice worker` process (started for B1, as deployed) runs.

Side by side, alternating: the project's Syncer (as `emailservice sync` runs it, in a warm
process as a worker does), mbsync into a Maildir, and the raw fetch ceiling. Each project
repetition syncs into a fresh account row; the previous one is deleted and vacuumed outside
the timing.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from bench.lab import BIN, Lab
from bench.mailboxes import filled
from bench.mbsync import Mbsync
from bench.rawfetch import drain
from bench.report import Result
from bench.stats import Row, summarize

FOLDERS = ["INBOX", "Archive", "Sent", "Lists/Dev", "Projects"]
SIZES = {True: {"messages": 2000, "reps": 3}, False: {"messages": 50_000, "reps": 3}}


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    n = size["messages"]
    box = filled(lab, "b1", FOLDERS, n)
    host, port = lab.info.host, lab.info.imap_port
    tenant = lab.tenant("b1")
    mbsync = Mbsync(lab.work / "b1-mbsync", host, port, box.email, box.password)
    drain(host, port, box.email, box.password, FOLDERS)  # warm Dovecot's caches for everyone

    project, searchable, peer, ceiling, ceiling_mb = [], [], [], [], []
    last_account = None

    def run_project() -> None:
        nonlocal last_account
        if last_account is not None:
            lab.delete_account(last_account)
        account_id = lab.account(tenant.id, box.email, box.password)
        syncer = lab.syncer()
        began = time.perf_counter()
        outcome = syncer.sync_account(account_id)
        elapsed = time.perf_counter() - began
        if outcome.messages_fetched != n:
            raise RuntimeError(f"project synced {outcome.messages_fetched} of {n} messages")
        while unindexed(account_id) != (n, 0):
            if time.perf_counter() - began > elapsed + 600:
                raise RuntimeError("messages still not searchable 10 minutes after the sync")
            time.sleep(0.02)
        project.append(n / elapsed)
        searchable.append(n / (time.perf_counter() - began))
        last_account = account_id

    def unindexed(account_id: int) -> tuple[int, int]:
        """(messages, messages without their search vector) of the account."""
        with lab.engine.connect() as conn:
            total, left = conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE search_vector IS NULL)"
                    " FROM messages WHERE account_id = :id"
                ),
                {"id": account_id},
            ).one()
            return total, left

    def run_mbsync() -> None:
        mbsync.reset()
        elapsed = mbsync.run()
        if mbsync.count() != n:
            raise RuntimeError(f"mbsync stored {mbsync.count()} of {n} messages")
        peer.append(n / elapsed)

    def run_drain() -> None:
        elapsed, received = drain(host, port, box.email, box.password, FOLDERS)
        ceiling.append(n / elapsed)
        ceiling_mb.append(received / elapsed / 2**20)

    sides = [run_project, run_mbsync, run_drain]
    # The worker that runs the indexing jobs the sync enqueues (all queues, as deployed).
    with lab.process([str(BIN / "emailservice"), "worker"], "b1-worker"):
        time.sleep(2)  # registered and listening
        for rep in range(size["reps"]):
            for side in sides[rep % 3 :] + sides[: rep % 3]:
                side()
    if lab.profiling:
        from bench.profiling import profile_call

        lab.delete_account(last_account)
        account_id = lab.account(tenant.id, box.email, box.password)
        profile_call("B1-initial-sync", lambda: lab.syncer().sync_account(account_id))
    mb_per_s = [r * box.corpus["total_MiB"] / n for r in project]
    rows = [
        Row(
            "B1", "initial sync, until readable", "msgs/s", summarize(project), "mbsync",
            summarize(peer), goal=(">=", 0.5),
        ),
        Row(
            "B1", "initial sync, until searchable", "msgs/s", summarize(searchable), "mbsync",
            summarize(peer), goal=(">=", 0.25),
        ),
        Row(
            "B1", "initial sync, until readable", "msgs/s", summarize(project), "raw FETCH drain",
            summarize(ceiling), note="the ceiling: no client can beat it",
        ),
        Row(
            "B1", "mbsync (for scale)", "msgs/s", summarize(peer), "raw FETCH drain",
            summarize(ceiling),
        ),
    ]  # fmt: skip
    notes = [
        f"project {summarize(mb_per_s).median:.1f} MiB/s, raw drain "
        f"{summarize(ceiling_mb).median:.1f} MiB/s",
        "project: Syncer.sync_account with no run limits (what `emailservice sync` runs), "
        "IMAP without TLS on loopback, like mbsync's `SSLType None`; its indexing jobs run "
        "in one `emailservice worker` process.",
    ]
    return Result("B1", rows, corpus=box.corpus, notes=notes)
