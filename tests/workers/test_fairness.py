"""Fair scheduling between tenants, with real worker processes on the real stack.

Tenant A's accounts are on a tarpit (an IMAP server of the test's own that greets and then
says nothing for a while), so each of A's syncs holds its worker for seconds. With
TENANT_MAX_CONCURRENT_JOBS=2 and three workers, A's backlog of 50 syncs may never occupy more
than two workers, and tenant B's sync (real Dovecot) and send (real Postfix), asked for after
A's backlog, still finish long before that backlog drains.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job

from app.jobs import SYNC_ACCOUNT, TenantSlots
from app.services.accounts import AccountFields, ServerFields, create_account
from app.states import Security
from tests.mailbox import UserPool, add_account, message, stored
from tests.support import Processes, allowing, wait_for
from tests.tarpit import Tarpit

pytestmark = pytest.mark.usefixtures("empty_queues")

CAP = 2
WORKERS = CAP + 1
HOLD = 6  # seconds each of A's syncs lasts (the tarpit closes the connection then)
BACKLOG = 50
WINDOW = 5  # seconds over which the workers' CPU is measured


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Occupancy:
    """Samples, every 0.1 s, how many workers run one of A's jobs (read from RQ itself).

    A job counts once the same worker still has it a sample later: a worker that takes a job
    and refuses it (the tenant's slots are full) has it for a few milliseconds only, and is
    not running it."""

    def __init__(self, redis, accounts: set[int]) -> None:
        self.redis, self.accounts = redis, accounts
        self.samples: list[int] = []
        self._seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Occupancy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def running(self) -> set[tuple[str, str]]:
        """(worker, job id) of every execution of one of A's jobs now."""
        found = set()
        for worker in Worker.all(connection=self.redis):
            for execution in worker.get_current_executions(refresh=True):
                try:
                    job = Job.fetch(execution.job_id, connection=self.redis)
                except NoSuchJobError:
                    continue
                if job.func_name == SYNC_ACCOUNT.func and job.args[0] in self.accounts:
                    found.add((worker.name, job.id))
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = self.running()
            self.samples.append(len(now & self._seen))
            self._seen = now


def test_one_tenants_backlog_never_takes_every_worker_and_others_go_first(
    fresh_migrated_env, contexts, stack_control, user_pools, redis_client, tmp_path
):
    from app import create_app
    from tests.conftest import make_tenant_user

    with Tarpit(HOLD) as tarpit:
        env = allowing(
            {**fresh_migrated_env, "TENANT_MAX_CONCURRENT_JOBS": str(CAP)},
            f"127.0.0.1:{tarpit.port}",
        )
        ctx = contexts(env)
        a, b = make_tenant_user(ctx, "a"), make_tenant_user(ctx, "b")
        client = create_app(env).test_client()

        slow = ServerFields("127.0.0.1", tarpit.port, Security.NONE, "someone", "secret")
        a_accounts = set()
        for i in range(BACKLOG):
            with ctx.work(a.tenant_id) as unit:
                fields = AccountFields(f"a{i}@slow.example", None, slow, slow)
                a_accounts.add(create_account(unit, fields, verify=False).id)
        for account_id in sorted(a_accounts):
            asked = client.post(f"/api/sync/imap/{account_id}", headers=a.headers)
            assert asked.status_code == 202

        pool = user_pools.setdefault(stack_control.name, UserPool(stack_control))
        sender, recipient = pool.take(), pool.take()
        sender.append("INBOX", message(subject="B's own mail"))
        b_account = add_account(ctx, b.tenant_id, sender)

        workers = Processes(env, tmp_path)
        try:
            with Occupancy(redis_client, a_accounts) as occupancy:
                for _ in range(WORKERS):
                    workers.start("worker")
                # A's backlog has taken what it may: its slots are full.
                wait_for(lambda: tarpit.open >= CAP, timeout=60, interval=0.05)

                # Now B asks, behind A's whole backlog.
                asked = client.post(f"/api/sync/imap/{b_account}", headers=b.headers)
                assert asked.status_code == 202
                draft = client.post(
                    "/api/compose",
                    json={"account_id": b_account, "to": [recipient.email], "text": "on time"},
                    headers=b.headers,
                ).get_json()
                sent = client.post(f"/api/compose/{draft['id']}/send", headers=b.headers)
                assert sent.status_code == 202
                outbox_id = sent.get_json()["id"]

                def b_done() -> bool:
                    entry = client.get(f"/api/outbox/{outbox_id}", headers=b.headers).get_json()
                    synced = stored(ctx.sessions, b_account).get("INBOX", {})
                    return entry["state"] == "sent" and len(synced) == 1

                wait_for(b_done, timeout=60, interval=0.2)
                a_started = tarpit.accepted
                # B's sync and send ran while A's backlog was far from drained.
                assert a_started < BACKLOG // 2, a_started
                # A's waiting jobs cost the workers little: no worker spins on them. (The
                # worker processes themselves: A's jobs run in work-horses, and A's jobs
                # sit waiting for a tarpit anyway.)
                parents = [w.pid for w in workers.running]
                spent = sum(map(cpu_seconds, parents))
                time.sleep(WINDOW)
                spent = sum(map(cpu_seconds, parents)) - spent
                print(f"worker processes used {spent:.2f} s of CPU in {WINDOW} s")
                assert tarpit.accepted < BACKLOG - 10  # A's backlog was still there
                assert spent < 0.25 * WINDOW  # a quarter of one core, for all of them
        finally:
            workers.stop_all()

    # Exact: the tarpit counts A's connections as they open and close.
    assert tarpit.most_open == CAP
    # Sampled from RQ: the workers running one of A's jobs.
    assert occupancy.samples and max(occupancy.samples) <= CAP
    assert max(occupancy.samples) == CAP
    # Nothing of A is left holding a slot once its workers stopped.
    assert TenantSlots(redis_client).holders(a.tenant_id) == []


def test_slots_are_leases_held_up_to_the_cap(redis_client):
    slots = TenantSlots(redis_client, lease_seconds=1)
    tenant = 10**9  # no real tenant's key
    redis_client.delete(slots.key(tenant))
    assert slots.acquire(tenant, "one", cap=2) and slots.acquire(tenant, "two", cap=2)
    assert not slots.acquire(tenant, "three", cap=2)
    slots.release(tenant, "one")
    assert slots.acquire(tenant, "three", cap=2)
    assert sorted(slots.holders(tenant)) == ["three", "two"]
    # A holder that stops renewing (its worker died elsewhere) loses its slot with the lease.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert slots.renew(tenant, "three")
        time.sleep(0.2)
    assert slots.acquire(tenant, "four", cap=2)  # "two" lapsed; "three" was renewed
    assert not slots.renew(tenant, "two")
    assert sorted(slots.holders(tenant)) == ["four", "three"]
    redis_client.delete(slots.key(tenant))


def test_the_slot_of_a_killed_worker_is_free_at_once_on_its_machine(
    fresh_migrated_env, contexts, redis_client, tmp_path
):
    from app.jobs import Jobs
    from tests.conftest import make_tenant_user
    from tests.support import kill_tree, run_cli

    with Tarpit(hold=8) as tarpit:
        env = allowing(
            {**fresh_migrated_env, "TENANT_MAX_CONCURRENT_JOBS": "1"},
            f"127.0.0.1:{tarpit.port}",
        )
        fresh_ctx = contexts(env)
        user = make_tenant_user(fresh_ctx, "a")
        slow = ServerFields("127.0.0.1", tarpit.port, Security.NONE, "someone", "secret")
        ids = []
        for i in range(2):
            with fresh_ctx.work(user.tenant_id) as unit:
                fields = AccountFields(f"a{i}@slow.example", None, slow, slow)
                ids.append(create_account(unit, fields, verify=False).id)
        jobs = Jobs(redis_client)
        jobs.enqueue(SYNC_ACCOUNT, ids[0])
        workers = Processes(env, tmp_path)
        try:
            worker = workers.start("worker", "sync")
            wait_for(lambda: tarpit.open == 1, timeout=30, interval=0.05)
            assert len(TenantSlots(redis_client).holders(user.tenant_id)) == 1
            kill_tree(worker.pid)  # worker and work-horse: nothing releases the slot
            worker.wait()
        finally:
            workers.stop_all()
        assert len(TenantSlots(redis_client).holders(user.tenant_id)) == 1  # left behind

        # The next worker on this machine sees the holder's process is gone and takes the
        # slot now, not when its lease ends (a burst worker would otherwise put the job
        # back and stop with it unrun).
        jobs.enqueue(SYNC_ACCOUNT, ids[1])
        before = tarpit.accepted
        result = run_cli(["worker", "--burst", "sync"], env, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr
        # ids[1]'s job, and ids[0]'s sync, which the killed worker left half-done: the
        # new worker resumes it at start.
        assert tarpit.accepted == before + 2


def test_with_the_database_down_a_tenants_job_waits_and_the_worker_goes_on(
    env, migrated, redis_client, tmp_path
):
    from dataclasses import replace

    from app.jobs import HEARTBEAT, Jobs, QueueName
    from tests.support import free_port

    # Nothing listens where this worker looks for PostgreSQL.
    down = env["DATABASE_URL"].rsplit("@", 1)[0] + f"@127.0.0.1:{free_port()}/nowhere"
    job_id = Jobs(redis_client).enqueue(SYNC_ACCOUNT, 12345)
    workers = Processes({**env, "DATABASE_URL": down}, tmp_path)
    try:
        worker = workers.start("worker", "sync")
        job = Job.fetch(job_id, connection=redis_client)
        wait_for(lambda: job.get_status(refresh=True) == "scheduled", timeout=30)
        assert worker.poll() is None  # still serving
        # It goes on with other work (the heartbeat needs only Redis).
        heartbeat = Jobs(redis_client).enqueue(replace(HEARTBEAT, queue=QueueName.SYNC))
        wait_for(lambda: Jobs(redis_client).state(heartbeat) == "finished", timeout=30)
    finally:
        workers.stop_all()


def test_every_job_working_for_a_tenant_names_its_owner():
    """A job taking an account or an outbox entry is a tenant's work and must go through the
    tenant's slots: the catalogue says so by its `owner`, checked against the function."""
    import importlib
    import inspect

    from app.jobs import CATALOGUE, Owner

    expected = {"account_id": Owner.ACCOUNT, "outbox_id": Owner.OUTBOX}
    gated = set()
    for spec in CATALOGUE:
        module, _, name = spec.func.rpartition(".")
        params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        assert spec.owner == (expected.get(params[0]) if params else None), spec.func
        if spec.owner:
            gated.add(name)
    assert gated == {"sync_account", "apply_message_changes", "send_message", "file_sent_copy"}
