"""Workers, the scheduler and syncs ride out outages of their own Redis and PostgreSQL.

Each test runs real `emailservice worker` and `scheduler` processes against a private
redis-server (and PostgreSQL cluster) of its own, which it kills with SIGKILL (stops with
`pg_ctl stop -m immediate`) and starts again on the same port and data: never the session's
servers, which other tests use.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_scheduler import Scheduler
from sqlalchemy.exc import OperationalError

from app.context import make_redis
from app.jobs import HEARTBEAT, SYNC_ACCOUNT, QueueName
from app.services.accounts import AccountFields, ServerFields, create_account
from app.states import Security
from devstack import postgres, redisdb
from tests.mailbox import add_account, message, stored
from tests.support import Processes, TcpProxy, allowing, free_port, kill_tree, wait_for
from tests.tarpit import Tarpit

OUTAGE = 5  # seconds


class PrivateRedis:
    """A redis-server of the test's own (appendonly, as deployed), killed and started again."""

    def __init__(self, root: Path) -> None:
        self.dir, self.port = root / "redis", free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redisdb.start_server(self.dir, self.port, self.dir.parent / "redis.log")

    def kill(self) -> None:
        pid = redisdb.server_pid(self.dir / "redis.pid")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not redisdb.ping(self.port), timeout=10)


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (in a directory its server user can read)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="es-outage-pg-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.url = postgres.sqlalchemy_url(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")

    def start(self) -> None:
        postgres.start_cluster(
            self.root / "data", self.port, self.root / "pg.log", self.root / "sock"
        )

    def stop_immediate(self) -> None:
        postgres.stop_cluster(self.root / "data", immediate=True)

    def remove(self) -> None:
        self.stop_immediate()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_postgres():
    from alembic import command

    from app.migrations import alembic_config

    server = PrivatePostgres()
    try:
        server.start()
        command.upgrade(alembic_config(server.url), "head")
        yield server
    finally:
        server.remove()


@pytest.fixture
def processes(tmp_path):
    started: list[Processes] = []

    def start(settings: dict[str, str]) -> Processes:
        started.append(Processes(settings, tmp_path))
        return started[-1]

    yield start
    for running in started:
        running.stop_all()


def status(redis, job_id: str) -> str | None:
    try:
        return Job.fetch(job_id, connection=redis).get_status(refresh=True)
    except NoSuchJobError:
        return None


def alive(running: Processes) -> list[int | None]:
    return [process.poll() for process in running.running]


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))


def test_the_local_stack_s_redis_keeps_queued_and_delayed_jobs_across_a_kill(private_redis):
    """devstack's redis-server (the one `make dev` and the tests start) runs appendonly, as
    deployed hosts do: a kill -9 loses at most the last second, not the queues."""
    from rq import Queue

    redis = make_redis(private_redis.url)
    queue = Queue("default", connection=redis)
    queued = queue.enqueue("workers.jobs.heartbeat")
    delayed = queue.enqueue_in(timedelta(hours=1), "workers.jobs.heartbeat")
    time.sleep(1.5)  # appendfsync everysec
    private_redis.kill()
    private_redis.start()
    redis = make_redis(private_redis.url)
    assert Queue("default", connection=redis).job_ids == [queued.id]
    assert status(redis, delayed.id) == "scheduled"


@pytest.mark.parametrize("cut_after", [None, 1, 5, 10, 30, 60, 100, 200])
def test_a_worker_rides_out_redis_going_away_during_its_own_start_up(private_redis, cut_after):
    """Redis away when the worker is made (None), or cut off `cut_after` bytes into its
    start: inside RQ's start-up steps (registering the worker, subscribing to its commands,
    the scheduler of delayed jobs) for the small counts, in its first dequeue for the larger
    ones. Every time the worker waits, takes the steps again once Redis is back (a second
    later), and runs the job that was waiting."""
    import threading

    from rq import Queue

    from workers.worker import ServiceWorker

    proxy = TcpProxy(("127.0.0.1", private_redis.port))
    direct = make_redis(private_redis.url)
    job = Queue("default", connection=direct).enqueue("os.getpid")
    connection = make_redis(f"redis://127.0.0.1:{proxy.port}/0")
    back = threading.Timer(1.0, proxy.start)  # Redis "restarts" a second later
    if cut_after is None:
        back.start()
        worker = ServiceWorker([Queue("default", connection=connection)], connection=connection)
    else:
        proxy.start()
        worker = ServiceWorker([Queue("default", connection=connection)], connection=connection)
        proxy.cut_after_bytes(cut_after)
        back.start()
    try:
        assert worker.work(burst=True, with_scheduler=True) is True
    finally:
        back.join()
        proxy.stop()
    assert status(direct, job.id) == "finished"
    assert Worker.all(connection=direct) == []  # registered once, and gone after a clean stop


def test_workers_and_the_scheduler_ride_out_a_redis_kill_while_jobs_run(
    fresh_migrated_env, private_redis, contexts, processes, tmp_path
):
    from tests.conftest import make_tenant_user

    # Each sync on the tarpit holds its worker for HOLD seconds: both workers are inside a
    # job when Redis dies, and both jobs end while it is still down.
    hold = 3
    with Tarpit(hold=hold) as tarpit:
        env = allowing(
            {**fresh_migrated_env, "REDIS_URL": private_redis.url}, f"127.0.0.1:{tarpit.port}"
        )
        ctx = contexts(env)
        slow = ServerFields("127.0.0.1", tarpit.port, Security.NONE, "someone", "secret")
        ids = []
        for name in ("a", "b"):  # two tenants: each may use one of the two workers
            user = make_tenant_user(ctx, name)
            with ctx.work(user.tenant_id) as unit:
                fields = AccountFields(f"{name}@slow.example", None, slow, slow)
                ids.append(create_account(unit, fields, verify=False).id)
        redis, jobs = ctx.redis, ctx.jobs
        running = processes(env)
        running.start("worker")
        running.start("worker")
        running.start("scheduler")
        running.start("worker", "send")  # idle, waiting on its queue, when Redis dies
        wait_for(lambda: len(Worker.all(connection=redis)) == 3, timeout=30)
        wait_for(lambda: list(Scheduler(connection=redis).get_jobs()), timeout=30)

        for account_id in ids:
            jobs.enqueue(SYNC_ACCOUNT, account_id)
        wait_for(lambda: tarpit.open == 2, timeout=30, interval=0.05)
        # Due in the middle of the outage: run by the workers' scheduler of delayed jobs.
        delayed = jobs.enqueue(HEARTBEAT, delay=2)
        time.sleep(1.2)  # on disk (appendfsync everysec)

        private_redis.kill()
        time.sleep(OUTAGE)
        assert alive(running) == [None] * 4, logs(tmp_path)
        private_redis.start()

        # The delayed job runs within seconds of the return, not at RQ's next maintenance.
        wait_for(lambda: status(redis, delayed) == "finished", timeout=15)
        # Every worker is still registered and takes new work: two slow jobs at once, and
        # one on the idle worker's queue.
        assert len(Worker.all(connection=redis)) == 3
        idle = jobs.enqueue(replace(HEARTBEAT, queue=QueueName.SEND))
        wait_for(lambda: status(redis, idle) == "finished", timeout=15)
        before = tarpit.accepted
        for account_id in ids:
            jobs.enqueue(SYNC_ACCOUNT, account_id)
        wait_for(lambda: tarpit.most_open >= 2 and tarpit.accepted >= before + 2, timeout=30)
        # The scheduler is back at work: a job it holds is put in its queue and run.
        scheduled = Scheduler(connection=redis).enqueue_in(
            timedelta(seconds=1), "workers.jobs.heartbeat"
        )
        wait_for(lambda: status(redis, scheduled.id) == "finished", timeout=30)
        assert alive(running) == [None] * 4, logs(tmp_path)

    # The outage is logged once by each part of a process (work loop or horse, scheduler of
    # delayed jobs), not once per retry.
    for log in sorted(tmp_path.glob("*.log")):
        text = log.read_text(errors="replace")
        assert text.count("unreachable; waiting for it") <= 3, text
        assert text.count("could not connect to Redis") <= 1, text
        assert "quitting" not in text, text


def test_a_stop_asked_during_a_redis_outage_is_honoured(
    fresh_migrated_env, private_redis, processes, tmp_path
):
    """An idle worker and the scheduler stop at once on SIGTERM while Redis is down. (A
    database of the test's own: on the session's, the worker's start-up sweep would find other
    tests' outbox entries, and a busy worker waits for its job to finish, result and all.)"""
    settings = {**fresh_migrated_env, "REDIS_URL": private_redis.url}
    running = processes(settings)
    running.start("worker")
    running.start("scheduler")
    redis = make_redis(private_redis.url)
    wait_for(lambda: len(Worker.all(connection=redis)) == 1, timeout=30)
    time.sleep(1)
    private_redis.kill()
    time.sleep(2)
    assert alive(running) == [None, None], logs(tmp_path)
    for process in running.running:
        os.killpg(process.pid, signal.SIGTERM)
    for process in running.running:
        assert process.wait(timeout=15) == 0, logs(tmp_path)


def test_workers_and_the_scheduler_ride_out_a_postgresql_stop(
    env, private_postgres, private_redis, contexts, processes, mailbox, tmp_path
):
    from tests.conftest import make_tenant_user

    settings = {**env, "DATABASE_URL": private_postgres.url, "REDIS_URL": private_redis.url}
    ctx = contexts(settings)
    user = make_tenant_user(ctx)
    mailbox.fill("INBOX", 3)
    account_id = add_account(ctx, user.tenant_id, mailbox)
    running = processes(settings)
    running.start("worker")
    running.start("worker")
    running.start("scheduler")
    running.start("idle")

    def synced() -> int:
        try:
            return len(stored(ctx.sessions, account_id).get("INBOX", {}))
        except OperationalError:
            return -1  # this process's pooled connection from before the stop

    # Synced once (the scheduler's periodic sync, the IDLE watcher's first request).
    wait_for(lambda: synced() == 3, timeout=60)
    wait_for(lambda: len(Worker.all(connection=ctx.redis)) == 2, timeout=30)

    private_postgres.stop_immediate()
    # Asked for while the database is down: the job waits, it is not lost.
    sync = ctx.jobs.enqueue(SYNC_ACCOUNT, account_id)
    # New mail: the IDLE watcher sees it and cannot request its sync yet.
    mailbox.append("INBOX", message(subject="during the outage"))
    # Work that needs only Redis goes on meanwhile.
    heartbeat = ctx.jobs.enqueue(replace(HEARTBEAT, queue=QueueName.SYNC))
    wait_for(lambda: status(ctx.redis, heartbeat) == "finished", timeout=15)
    time.sleep(OUTAGE)
    assert alive(running) == [None] * 4, logs(tmp_path)
    private_postgres.start()

    wait_for(lambda: synced() == 4, timeout=60)
    wait_for(lambda: status(ctx.redis, sync) == "finished", timeout=30)
    assert alive(running) == [None] * 4, logs(tmp_path)
    idle = (tmp_path / "idle-3.log").read_text()
    # The watcher met the outage, waited it out, and says so once each way.
    assert idle.count("(IDLE watcher) unreachable; waiting for it") == 1, idle
    assert idle.count("(IDLE watcher) back") == 1, idle


class SlowProxy(TcpProxy):
    """A TcpProxy whose server-to-client direction trickles (a slow link) while `slow`."""

    slow = True

    def _pipe(self, source, sink, downstream: bool) -> None:
        try:
            while data := source.recv(512 if self.slow else 65536):
                if downstream and self.slow:
                    time.sleep(0.1)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass


def test_a_sync_whose_worker_was_killed_is_resumed_without_a_new_request(
    fresh_migrated_env, contexts, processes, mailbox, tmp_path
):
    from app.services.sync import sync_status
    from app.services.sync.control import lock_held, request_sync
    from tests.conftest import make_tenant_user

    mailbox.fill("INBOX", 40)
    proxy = SlowProxy((mailbox.host, mailbox.imap_port))
    proxy.start()
    try:
        env = allowing(fresh_migrated_env, f"127.0.0.1:{proxy.port}")
        ctx = contexts(env)
        user = make_tenant_user(ctx)
        through = type(mailbox)(**{**vars(mailbox), "imap_port": proxy.port})
        account_id = add_account(ctx, user.tenant_id, through)
        running = processes(env)
        first = running.start("worker", "sync", SYNC_BATCH_MESSAGES="5")
        with ctx.work(user.tenant_id) as unit:
            request_sync(unit, account_id)

        def syncing() -> bool:
            with ctx.work() as unit:
                return lock_held(unit, account_id)

        def midway() -> bool:
            count = len(stored(ctx.sessions, account_id).get("INBOX", {}))
            return 0 < count < 40 and syncing()

        wait_for(midway, timeout=60, interval=0.05)
        kill_tree(first.pid)  # the worker and its work-horse, mid-round
        first.wait()
        wait_for(lambda: not syncing(), timeout=15)
        with ctx.work(user.tenant_id) as unit:
            interrupted = sync_status(unit, account_id)
        assert interrupted.state == "failed", interrupted
        assert len(stored(ctx.sessions, account_id).get("INBOX", {})) < 40

        proxy.slow = False
        running.start("worker", "sync")  # nobody asks for a sync again
        wait_for(lambda: len(stored(ctx.sessions, account_id).get("INBOX", {})) == 40, timeout=60)

        def done() -> str:
            with ctx.work(user.tenant_id) as unit:
                return sync_status(unit, account_id).state

        wait_for(lambda: done() == "idle", timeout=30)
    finally:
        proxy.stop()
