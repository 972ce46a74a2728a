"""Sending and reading under a steady load while Redis, then PostgreSQL, go away for seconds.

The test owns its Redis (kill -9, as a crash would; appendonly on, as deployed hosts run it)
and its PostgreSQL cluster (`pg_ctl stop -m immediate`), never the session stack's, which
other tests use. Mail goes through the session stack's real Postfix into its Dovecot. The API,
a worker and the scheduler are real `emailservice` processes.

What must hold: during each outage the API answers 503 (never 500, never a hang) and 200
within seconds of the return; every message the API accepted (202) is delivered exactly once
and ends `sent`; a message whose 250 arrives while PostgreSQL is stopped ends `sent`.
"""

from __future__ import annotations

import email
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

import pytest

from app.config import Settings
from app.context import ServiceContext
from app.models import OutboxEntry
from app.services.accounts import ServerFields
from app.states import Security
from devstack import paths, postgres, redisdb
from tests.mailbox import UserPool
from tests.services.test_outbox import make_account
from tests.smtp_peer import SmtpPeer, relay_to
from tests.support import Processes, allowing, api_process, free_port, http_get, wait_for

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 5
REQUEST_TIMEOUT = 20  # a request still unanswered after this is a hang
BACK_WITHIN = 10  # seconds after a server's return by which the API must answer 200 again
# Two workers: a tenant's job refused a slot while the other worker runs one of the same
# tenant goes back as a delayed job, and delayed jobs must resume after the Redis crash too.
WORKERS = 2


class PrivateServers:
    """A PostgreSQL cluster and a redis-server of the test's own, to stop and start at will."""

    def __init__(self) -> None:
        # Like a stack's state: in .stack/, or linked from there to a place the postgres user
        # can reach when the clone is private (root's home, for one).
        name = f"outage-{uuid.uuid4().hex[:8]}"
        self.link = paths.link_path(name, ROOT / ".stack")
        self.state = paths.prepare(name, ROOT / ".stack")
        self.pg_port, self.redis_port = free_port(), free_port()
        self.redis: subprocess.Popen | None = None
        admin = f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/postgres"
        self.admin_url = admin
        self.database_url = postgres.with_database(admin, "emailservice")
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    def start_postgres(self) -> None:
        postgres.start_cluster(
            self.state / "pg" / "data",
            self.pg_port,
            self.state / "postgres.log",
            self.state / "pg" / "sock",
        )

    def stop_postgres(self) -> None:
        postgres.stop_cluster(self.state / "pg" / "data", immediate=True)

    def start_redis(self) -> None:
        directory = self.state / "redis"
        directory.mkdir(exist_ok=True)
        with open(self.state / "redis.log", "ab") as log:
            self.redis = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: redisdb.ping(self.redis_port), timeout=10)

    def kill_redis(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGKILL)
            self.redis.wait()

    def start(self) -> None:
        import psycopg

        self.start_postgres()
        # devstack runs throwaway clusters without durable commits; an immediate stop would
        # then lose committed rows, which no deployed server does.
        with psycopg.connect(postgres.libpq_url(self.admin_url), autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET fsync = on")
            admin.execute("ALTER SYSTEM SET synchronous_commit = on")
            admin.execute("SELECT pg_reload_conf()")
        postgres.create_database(self.admin_url, "emailservice")
        self.start_redis()

    def stop(self) -> None:
        self.kill_redis()
        self.stop_postgres()
        paths.remove(self.link)


@dataclass
class Load:
    """Clients of the API: senders (a draft, then its send with an Idempotency-Key, retried
    with that key until it is accepted) and a reader listing accounts."""

    port: int
    headers: dict[str, str]
    account_id: int
    recipient: str
    requests: list[tuple[float, str, int | None, float]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # Idempotency-Key -> outbox id
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        headers = {**(headers or self.headers), "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers=headers, method=method
        )
        began = time.monotonic()
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        except OSError:
            status, payload = None, b""  # no answer at all: a hang or a dropped connection
        with self.lock:
            self.requests.append(
                (time.time(), f"{method} {path}", status, time.monotonic() - began)
            )
        return status, payload

    def sender(self) -> None:
        while not self.stop.is_set():
            key = f"load-{uuid.uuid4().hex}"
            status, payload = None, b""
            while status != 201 and not self.stop.is_set():
                status, payload = self.call(
                    "POST",
                    "/api/compose",
                    {"account_id": self.account_id, "to": [self.recipient], "text": key},
                )
                if status != 201:
                    time.sleep(0.3)
            if status != 201:
                return
            draft_id = json.loads(payload)["id"]
            # A client keeps retrying a send it has not seen accepted, with the same key.
            while True:
                status, payload = self.call("POST", f"/api/compose/{draft_id}/send", {}, key=key)
                if status == 202:
                    with self.lock:
                        self.accepted[key] = json.loads(payload)["id"]
                    break
                time.sleep(0.3)
            time.sleep(0.4)

    def reader(self) -> None:
        while not self.stop.is_set():
            self.call("GET", "/api/accounts")
            time.sleep(0.1)

    def statuses(self, since: float, until: float) -> list[int | None]:
        with self.lock:
            return [s for at, _, s, _ in self.requests if since <= at <= until]


def message_ids(mailbox) -> list[str]:
    with mailbox.client() as client:
        client.select_folder("INBOX", readonly=True)
        fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER]"])
        return [
            str(email.message_from_bytes(d[b"BODY[HEADER]"], policy=policy.default)["Message-ID"])
            for d in fetched.values()
        ]


def entry(sessions, outbox_id: int) -> OutboxEntry:
    with sessions() as session:
        return session.get(OutboxEntry, outbox_id)


@pytest.fixture
def servers():
    private = PrivateServers()
    private.start()
    yield private
    private.stop()


def test_sends_and_reads_ride_out_a_redis_then_a_postgres_outage(
    env, servers, tmp_path, stack, stack_control, user_pools
):
    from alembic import command

    from app.migrations import alembic_config
    from tests.conftest import make_tenant_user

    pool = user_pools.setdefault(stack_control.name, UserPool(stack_control))
    sender, recipient, peer_sender = pool.take(), pool.take(), pool.take()
    with SmtpPeer(relay=relay_to(stack.host, stack.smtp_port)) as peer:
        settings = allowing(
            {
                **env,
                "DATABASE_URL": servers.database_url,
                "REDIS_URL": servers.redis_url,
                "SEND_RETRY_SECONDS": "1",
            },
            f"127.0.0.1:{peer.port}",
        )
        command.upgrade(alembic_config(servers.database_url), "head")
        ctx = ServiceContext.build(Settings.from_mapping(settings))
        running = Processes(settings, tmp_path)
        try:
            user = make_tenant_user(ctx)
            account_id = make_account(ctx, user.tenant_id, sender)
            peer_smtp = ServerFields("127.0.0.1", peer.port, Security.NONE, peer_sender.email, "x")
            # The held message is another tenant's: it has a job slot of its own and does not
            # wait behind the load's backlog (one tenant's sends run one at a time here).
            other = make_tenant_user(ctx, "held")
            peer_account = make_account(ctx, other.tenant_id, peer_sender, smtp=peer_smtp)
            workers = [running.start("worker") for _ in range(WORKERS)]
            scheduler = running.start("scheduler")

            def alive() -> None:
                """Every worker and the scheduler rode out the outage by itself."""
                exited = [w.returncode for w in workers if w.poll() is not None]
                assert not exited, f"workers exited: {exited}"
                assert scheduler.poll() is None, f"the scheduler exited: {scheduler.returncode}"

            with api_process(settings, tmp_path) as (port, _):
                load = Load(port, user.headers, account_id, recipient.email)
                threads = [
                    threading.Thread(target=target, daemon=True)
                    for target in (load.sender, load.sender, load.reader)
                ]
                for thread in threads:
                    thread.start()

                def back() -> float:
                    returned = time.time()
                    wait_for(
                        lambda: (
                            (r := http_get(port, "/api/accounts", user.headers)) and r[0] == 200
                        ),
                        timeout=BACK_WITHIN,
                        interval=0.1,
                    )
                    return returned

                time.sleep(3)
                assert load.accepted, "no send accepted before the outages"

                # -- Redis crashes ------------------------------------------------------
                redis_down = time.time()
                servers.kill_redis()
                time.sleep(OUTAGE_SECONDS)
                servers.start_redis()
                redis_up = back()
                time.sleep(2)
                alive()
                time.sleep(3)

                # -- PostgreSQL stops while a server's 250 is on its way ----------------
                peer.scripts = ["hold_after_dot"]
                draft = load.call(
                    "POST",
                    "/api/compose",
                    {"account_id": peer_account, "to": [recipient.email], "text": "held"},
                    headers=other.headers,
                )
                assert draft[0] == 201
                held = load.call(
                    "POST",
                    f"/api/compose/{json.loads(draft[1])['id']}/send",
                    {},
                    key="held",
                    headers=other.headers,
                )
                assert held[0] == 202
                held_id = json.loads(held[1])["id"]
                assert peer.holding.wait(30)  # a worker sent the whole message and waits
                pg_down = time.time()
                servers.stop_postgres()
                peer.release.set()  # the 250 arrives while PostgreSQL is stopped
                time.sleep(OUTAGE_SECONDS)
                servers.start_postgres()
                pg_up = back()
                time.sleep(3)
                alive()
                time.sleep(2)
                load.stop.set()
                for thread in threads:
                    thread.join(REQUEST_TIMEOUT * 3)
                assert not any(t.is_alive() for t in threads), "a client hangs"

                everything = load.statuses(0, time.time())
                assert set(everything) <= {200, 201, 202, 503}, sorted(
                    {s for s in everything if s not in (200, 201, 202)}, key=str
                )
                for since, until in ((redis_down, redis_up), (pg_down, pg_up)):
                    assert 503 in load.statuses(since + 0.5, until)  # the outage was seen
                slowest = max(d for _, _, _, d in load.requests)
                assert slowest < REQUEST_TIMEOUT / 2

                # Every accepted message ends sent (retries, sweeps) and arrives exactly once.
                accepted = {**load.accepted, "held": held_id}
                sessions = ctx.sessions

                def all_settled():
                    states = {i: entry(sessions, i).state for i in accepted.values()}
                    busy = {"queued", "sending"} & set(states.values())
                    return None if busy else states

                revive_until = time.monotonic() + 200
                states = None
                while time.monotonic() < revive_until and states is None:
                    states = all_settled()
                    if states is None:
                        alive()
                        time.sleep(1)
                if states is None:
                    stuck = [entry(sessions, i) for i in accepted.values()]
                    stuck = [
                        (e.id, e.state, e.attempts, e.last_error, e.next_attempt_at)
                        for e in stuck
                        if e.state in ("queued", "sending")
                    ]
                    raise AssertionError(f"still queued or sending: {stuck}")
                assert set(states.values()) == {"sent"}, {
                    i: s for i, s in states.items() if s != "sent"
                }
                held_entry = entry(sessions, held_id)
                assert (held_entry.attempts, held_entry.last_error) == (1, None)
                assert peer.sessions == 1
                wanted = {entry(sessions, i).message_id for i in accepted.values()}

                def delivered():
                    found = message_ids(recipient)
                    return found if wanted <= set(found) else None

                found = wait_for(delivered, timeout=60, interval=1)
                time.sleep(2)  # a duplicate on its way would be in by now
                found = message_ids(recipient)
                twice = {m for m in wanted if found.count(m) != 1}
                assert not twice, f"delivered other than once: {twice}"
                print(
                    f"\n{len(load.requests)} requests, {len(accepted)} messages accepted, "
                    f"{everything.count(503)} answered 503"
                )
        finally:
            running.stop_all()
            ctx.close()
