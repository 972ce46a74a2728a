"""B6: what an idle synced account costs: memory per account and idle CPU.

N accounts (1000; quick 100), each a Dovecot mailbox of 20 messages synced by the project.
The service's processes (API, one worker, the scheduler, the IDLE watcher, which holds one
IMAP connection and one thread per account) run first on an empty database of their own, then
on the one with the N accounts; once every account is connected and the sync requests the
watcher makes on connecting are done, memory (PSS, so pages shared after RQ's fork count
once) and CPU over a quiet window are read from /proc. Per account = (full - empty) / N.
No comparator: the goal is absolute.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from sqlalchemy import text

from bench.corpus import Generator
from bench.lab import BIN, Lab
from bench.load import deliver
from bench.report import Result
from bench.stats import Row, summarize

SIZES = {True: {"accounts": 100, "window_s": 20}, False: {"accounts": 1000, "window_s": 60}}
PER_MAILBOX = 20
TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime, plus the children already reaped (RQ's work-horses)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
        except (OSError, ValueError):
            pass
    return total / TICKS


def imap_connections(pid: int, port: int) -> int:
    """Established TCP connections from process `pid` to the IMAP port."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return 0
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and int(parts[2].split(":")[1], 16) == port and parts[9] in inodes:
                count += 1
    return count


def queues_idle(lab: Lab, env: dict) -> bool:
    from app.context import make_redis
    from app.jobs import QUEUES, Jobs

    redis = make_redis(env["REDIS_URL"])
    try:
        for name in QUEUES:
            queue = Jobs(redis).queue(name)
            if queue.count or queue.started_job_registry.count:
                return False
        return True
    finally:
        redis.close()


def measure(lab: Lab, database_url: str, accounts: int, window: float) -> dict:
    """Start the service's processes on `database_url`, wait until settled, measure."""
    env = {"DATABASE_URL": database_url}
    emailservice = str(BIN / "emailservice")
    with ExitStack() as stack:
        procs = {
            name: stack.enter_context(lab.process(args, f"b6-{name}-{accounts}", **env))
            for name, args in {
                "api": [emailservice, "serve", "--port", str(_port())],
                "worker": [emailservice, "worker"],
                "scheduler": [emailservice, "scheduler"],
                "idle": [emailservice, "idle"],
            }.items()
        }
        deadline = time.monotonic() + 120 + accounts * 0.3
        while imap_connections(procs["idle"].pid, lab.info.imap_port) < accounts:
            if time.monotonic() > deadline:
                found = imap_connections(procs["idle"].pid, lab.info.imap_port)
                raise RuntimeError(f"the IDLE watcher holds {found} of {accounts} connections")
            time.sleep(1)
        time.sleep(3)
        while not queues_idle(lab, dict(lab.env, **env)):
            if time.monotonic() > deadline:
                raise RuntimeError("the sync requests made on connecting did not finish")
            time.sleep(1)
        time.sleep(3)
        pids = {name: tree(p.pid) for name, p in procs.items()}
        every = [pid for group in pids.values() for pid in group]
        cpu_before, began = cpu_seconds(every), time.monotonic()
        time.sleep(window)
        every = [pid for p in procs.values() for pid in tree(p.pid)]
        cpu = (cpu_seconds(every) - cpu_before) / (time.monotonic() - began)
        memory = {name: pss_mib(tree(p.pid)) for name, p in procs.items()}
        dovecot_imap = _dovecot_imap_mib(lab)
    return {"pss_mib": memory, "cpu_share": cpu, "dovecot_imap_mib": dovecot_imap}


def _port() -> int:
    from bench.lab import free_port

    return free_port()


def _dovecot_imap_mib(lab: Lab) -> float:
    """PSS of the stack's Dovecot imap processes (one per connection), for the notes."""
    from pathlib import Path

    from devstack import dovecot

    master = dovecot.master_pid(Path(lab.info.state_dir))
    pids = []
    for pid in tree(master) if master else []:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "imap":
                    pids.append(pid)
        except OSError:
            pass
    return pss_mib(pids)


def populate(lab: Lab, count: int) -> tuple[int, list[int]]:
    """`count` mailboxes of PER_MAILBOX messages, each an account synced by the project."""
    users = lab.mailboxes("b6-", count)
    generator = Generator(seed=3)
    mail = [generator.message(i) for i in range(PER_MAILBOX)]
    host, port = lab.info.host, lab.info.imap_port
    tenant = lab.tenant("b6")

    def one(user: tuple[str, str]) -> int:
        email, password = user
        deliver(host, port, email, password, [("INBOX", i, m) for i, m in enumerate(mail)])
        account_id = lab.account(tenant.id, email, password)
        outcome = lab.syncer().sync_account(account_id)
        if outcome.messages_fetched != PER_MAILBOX:
            raise RuntimeError(f"account {account_id}: {outcome}")
        return account_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(one, users.items()))
    return tenant.id, ids


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    n = size["accounts"]
    # Databases of B6's own: the service's processes watch and sync every active account they
    # find, and other benchmarks leave theirs (B4's have no mailbox at all) in the main one.
    baseline = measure(lab, lab.new_database("bench_b6_empty"), 0, size["window_s"])
    with lab.database(lab.new_database("bench_b6")):
        _tenant, ids = populate(lab, n)
        with lab.engine.connect() as conn:
            db_mib = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        db_mib /= 2**20
        full = measure(lab, lab.env["DATABASE_URL"], n, size["window_s"])
    base_total = sum(baseline["pss_mib"].values())
    full_total = sum(full["pss_mib"].values())
    per_account = (full_total - base_total) / n
    rows = [
        Row(
            "B6", f"memory per idle account ({n} accounts)", "MiB", summarize([per_account]),
            goal=("<=", 1.0), goal_on="value",
            extra={"baseline": baseline, "full": full},
        ),
        Row(
            "B6", f"idle CPU, {n} accounts", "% of a core",
            summarize([full["cpu_share"] * 100]), goal=("<=", 5.0), goal_on="value",
        ),
        Row(
            "B6", "idle CPU, no account", "% of a core",
            summarize([baseline["cpu_share"] * 100]),
        ),
    ]  # fmt: skip
    by_process = ", ".join(
        f"{name} {baseline['pss_mib'][name]:.0f} -> {full['pss_mib'][name]:.0f} MiB"
        for name in full["pss_mib"]
    )
    notes = [
        f"PSS of the service's processes, empty -> {n} accounts: {by_process} "
        f"(total {base_total:.0f} -> {full_total:.0f} MiB).",
        f"Dovecot's imap processes for those connections: {full['dovecot_imap_mib']:.0f} MiB "
        f"({full['dovecot_imap_mib'] / n:.2f} MiB per account; the mail server's, not ours).",
        f"CPU over a {size['window_s']} s window after every account was connected and the "
        "sync requests made on connecting had run; SYNC_INTERVAL_SECONDS at its default (300).",
        f"database size with {n} synced accounts: {db_mib:.0f} MiB.",
    ]
    corpus = {"accounts": n, "messages_per_account": PER_MAILBOX}
    return Result("B6", rows, corpus=corpus, notes=notes)
