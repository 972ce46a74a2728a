"""Sync through the real processes: API requests, RQ workers, the scheduler and the IDLE watcher."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text

from app.jobs import Jobs, QueueName
from tests.mailbox import add_account, message, stored
from tests.support import Processes, kill_tree, run_cli, wait_for

pytestmark = pytest.mark.usefixtures("empty_queues")


@pytest.fixture
def lonely(fresh_migrated_env, fresh_ctx, mailbox, tmp_path):
    """A database of the test's own with one tenant and one account: for processes that act on
    every account (scheduler, IDLE watcher), which must not touch other tests' accounts."""
    from tests.conftest import make_tenant_user

    user = make_tenant_user(fresh_ctx)
    account_id = add_account(fresh_ctx, user.tenant_id, mailbox)
    running = Processes(fresh_migrated_env, tmp_path)
    yield running, fresh_ctx.sessions, account_id, user
    running.stop_all()


@pytest.fixture
def processes(env, migrated, tmp_path):
    running = Processes(env, tmp_path)
    yield running
    running.stop_all()


def metric(client, name: str) -> float:
    """A sample of /metrics (counters are kept in Redis, shared by the tests of a run)."""
    text = client.get("/metrics").get_data(as_text=True)
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[-1])


def test_sync_requested_through_the_api_runs_on_a_worker(
    client, tenant_a, account_id, mailbox, env, tmp_path, db_sessionmaker
):
    mailbox.fill("INBOX", 5)
    first = client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers)
    assert first.status_code == 202
    again = client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers)
    assert again.get_json() == first.get_json()  # the same job, not a second one
    assert first.get_json()["status_url"] == f"/api/sync/status/{account_id}"
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers).get_json()
    assert status["state"] == "queued"
    assert status["last_synced_at"] is None

    fetched = metric(client, "emailservice_sync_messages_fetched_total")
    assert run_cli(["worker", "--burst", "sync"], env, tmp_path).returncode == 0
    assert metric(client, "emailservice_sync_messages_fetched_total") == fetched + 5
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers).get_json()
    assert status["state"] == "idle", status
    assert status["last_synced_at"] is not None
    assert status["last_error"] is None
    assert status["progress"]["messages_synced"] == 5
    assert {"name": "INBOX", "messages": 5} == {
        k: v
        for k, v in next(f for f in status["folders"] if f["name"] == "INBOX").items()
        if k != "last_synced_at"
    }
    folders = client.get(f"/api/accounts/{account_id}/folders", headers=tenant_a.headers).get_json()
    inbox = next(f for f in folders["items"] if f["name"] == "INBOX")
    assert (inbox["role"], inbox["messages"], inbox["unread"]) == ("inbox", 5, 5)
    assert {f["role"] for f in folders["items"]} >= {"inbox", "sent", "trash", "drafts", "junk"}


def test_a_wrong_password_marks_the_account_and_stops_syncing_it(
    client, tenant_a, mailbox, env, tmp_path, ctx
):
    wrong = type(mailbox)(**{**vars(mailbox), "password": "not-the-password"})
    account_id = add_account(ctx, tenant_a.tenant_id, wrong)
    assert client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers).status_code == 202
    assert run_cli(["worker", "--burst", "sync"], env, tmp_path).returncode == 0
    account = client.get(f"/api/accounts/{account_id}", headers=tenant_a.headers).get_json()
    assert account["state"] == "auth_failed"
    status = client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers).get_json()
    assert status["state"] == "failed"
    assert status["last_error"].startswith("login refused: ")
    assert "AUTHENTICATIONFAILED" in status["last_error"] or "failed" in status["last_error"]
    refused = client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers)
    assert refused.status_code == 409
    # New credentials make it syncable again.
    body = {"imap": {"password": mailbox.password}}
    assert (
        client.patch(f"/api/accounts/{account_id}", json=body, headers=tenant_a.headers).get_json()[
            "state"
        ]
        == "active"
    )
    assert client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers).status_code == 202


def test_a_long_sync_continues_in_bounded_jobs(
    account_id, mailbox, env, tmp_path, db_sessionmaker, client, tenant_a
):
    mailbox.fill("INBOX", 30)
    client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers)
    # Each job stops after a batch of 10 and enqueues its continuation.
    settings = dict(env, SYNC_JOB_MAX_MESSAGES="10", SYNC_BATCH_MESSAGES="10")
    result = run_cli(["worker", "--burst", "sync"], settings, tmp_path)
    assert result.returncode == 0
    runs = [json.loads(line) for line in result.stderr.splitlines() if "sync run finished" in line]
    # This account's (the worker may also resume other tests' interrupted syncs).
    runs = [r for r in runs if r["account_id"] == account_id]
    assert len(runs) >= 3
    assert all(r["fetched"] <= 10 for r in runs)
    assert sum(r["fetched"] for r in runs) == 30
    assert [r["continued"] for r in runs] == [True] * (len(runs) - 1) + [False]
    assert set(stored(db_sessionmaker, account_id)["INBOX"]) == mailbox.uids("INBOX")


def test_a_worker_killed_mid_sync_leaves_nothing_the_next_sync_cannot_finish(
    account_id, mailbox, env, client, tenant_a, processes, db_sessionmaker, tmp_path, redis_client
):
    mailbox.fill("INBOX", 400)
    client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers)
    worker = processes.start("worker", "sync", SYNC_BATCH_MESSAGES="20")

    def some_committed() -> bool:
        with db_sessionmaker() as s:
            return (
                s.execute(
                    text("SELECT count(*) FROM messages WHERE account_id = :a"), {"a": account_id}
                ).scalar()
                >= 20
            )

    wait_for(some_committed, timeout=60, interval=0.02)
    victims = kill_tree(worker.pid)  # the worker and its work-horse, mid-sync
    assert len(victims) >= 2, "the work-horse was not running"
    worker.wait()
    with db_sessionmaker() as s:
        partial = s.execute(
            text("SELECT count(*) FROM messages WHERE account_id = :a"), {"a": account_id}
        ).scalar()
    assert partial < 400

    # Nothing stale blocks the next request: the lock dies with the worker's connection, as
    # soon as PostgreSQL sees it closed.
    def state() -> str:
        return client.get(f"/api/sync/status/{account_id}", headers=tenant_a.headers).get_json()[
            "state"
        ]

    assert wait_for(lambda: state() != "running", timeout=10)
    assert state() == "failed"  # interrupted, and said so
    Jobs(redis_client).queue(QueueName.SYNC).empty()
    assert client.post(f"/api/sync/imap/{account_id}", headers=tenant_a.headers).status_code == 202
    assert run_cli(["worker", "--burst", "sync"], env, tmp_path).returncode == 0
    rows = stored(db_sessionmaker, account_id)["INBOX"]
    assert set(rows) == mailbox.uids("INBOX")
    with db_sessionmaker() as s:
        assert (
            s.execute(
                text("SELECT count(*) FROM messages WHERE account_id = :a"), {"a": account_id}
            ).scalar()
            == 400
        )


def test_the_scheduler_syncs_accounts_by_itself(lonely, mailbox):
    processes, sessions, account_id, _ = lonely
    mailbox.fill("INBOX", 3)
    processes.start("scheduler", SYNC_INTERVAL_SECONDS="10")
    processes.start("worker")

    def synced() -> bool:
        return len(stored(sessions, account_id).get("INBOX", {})) == 3

    assert wait_for(synced, timeout=40, interval=0.5)
    # And again on the next tick, with no one asking.
    mailbox.append("INBOX", message(subject="between two ticks"))
    assert wait_for(
        lambda: len(stored(sessions, account_id)["INBOX"]) == 4, timeout=40, interval=0.5
    )


def test_idle_brings_new_mail_in_without_any_trigger(lonely, mailbox, fresh_migrated_env):
    from app import create_app

    processes, sessions, account_id, user = lonely
    client = create_app(fresh_migrated_env).test_client()
    processes.start("idle", SYNC_INTERVAL_SECONDS="3600")
    processes.start("worker")
    # The watcher syncs once when it connects; wait for that, then deliver.
    wait_for(lambda: "INBOX" in stored(sessions, account_id), timeout=30, interval=0.3)
    time.sleep(1)
    mailbox.deliver(message(subject="pushed by IDLE", to=mailbox.email))
    started = time.monotonic()

    def visible() -> bool:
        status = client.get(f"/api/sync/status/{account_id}", headers=user.headers).get_json()
        return any(f["name"] == "INBOX" and f["messages"] == 1 for f in status["folders"])

    assert wait_for(visible, timeout=30, interval=0.3)
    assert time.monotonic() - started < 30
