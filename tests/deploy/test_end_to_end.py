"""The service end to end on the deployed host, used from outside (level 4 in docs/deploy.md):
through nginx, a tenant connects the host's own mailbox (verified over IMAP and SMTP), syncs it,
sends a message that arrives over IMAP, and finds it with search, with no trigger but the deployed
IDLE watcher, workers and scheduler."""

from __future__ import annotations

import imaplib
import secrets
import time
import uuid

import pytest

from tests.deploy.deployment import Deployment, tls

pytestmark = pytest.mark.level4

MAILBOX = "test@example.test"


def _until(what: str, check, timeout: float = 90, interval: float = 2):
    """Poll `check` (slowly: the tenant's API rate limit is 60 requests a minute)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(interval)


def _tenant(deployed: Deployment) -> str:
    """A new tenant and user made with the deployed CLI; a token from the deployed API."""
    tenant, password = f"e2e-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    host = deployed.host
    assert host.run(f"emailservice tenant create {tenant}").returncode == 0
    created = host.run(f"emailservice user create --tenant {tenant} alice", input=password + "\n")
    assert created.returncode == 0, created.stderr
    return deployed.login(tenant, "alice", password)


def test_connect_sync_send_and_search_through_the_deployed_api(deployed):
    token = _tenant(deployed)
    password = deployed.secrets["MAILBOX_TEST_PASSWORD"]
    server = {"host": "127.0.0.1", "username": MAILBOX, "password": password}
    status, account = deployed.api(
        "/api/accounts",
        token=token,
        body={
            "email": MAILBOX,
            "display_name": "Deployed Tester",
            "imap": {**server, "port": 993, "security": "ssl"},
            "smtp": {**server, "port": 587, "security": "starttls"},
            "verify": True,
        },
    )
    assert status == 201, account
    account_id = account["id"]

    status, job = deployed.api(f"/api/sync/imap/{account_id}", token=token, method="POST")
    assert status == 202, job

    def synced():
        status, body = deployed.api(f"/api/sync/status/{account_id}", token=token)
        assert status == 200, body
        assert body["state"] != "failed", body
        return body if body["state"] == "idle" and body["last_synced_at"] else None

    _until("the first sync finished", synced)

    word = f"zebra{uuid.uuid4().hex[:8]}"
    status, draft = deployed.api(
        "/api/compose",
        token=token,
        body={
            "account_id": account_id,
            "to": [f"Deployed Tester <{MAILBOX}>"],
            "subject": f"Grüße {word}",
            "text": f"Sent through the deployed API: {word}.",
        },
    )
    assert status == 201, draft
    status, entry = deployed.api(
        f"/api/compose/{draft['id']}/send", token=token, method="POST", body={}
    )
    assert status == 202, entry

    def sent():
        status, body = deployed.api(f"/api/outbox/{entry['id']}", token=token)
        assert status == 200 and body["state"] not in ("failed", "uncertain"), body
        return body if body["state"] == "sent" and body["sent_copy"] == "done" else None

    done = _until("the message sent and filed in Sent", sent)
    assert done["attempts"] == 1

    # It arrived: read over IMAP from outside the host, TLS verified with the host's certificate.
    with imaplib.IMAP4_SSL(deployed.address, 993, ssl_context=tls(deployed.ca)) as imap:
        imap.login(MAILBOX, password)

        def delivered():
            imap.select("INBOX", readonly=True)
            _, found = imap.search(None, "HEADER", "Message-ID", done["message_id"])
            return found[0].split()

        assert len(_until("delivery to the mailbox", delivered, interval=1)) == 1

    # No sync was requested after sending: the IDLE watcher and the workers bring the new
    # INBOX message (and the scheduler's periodic sync or the next IDLE, the Sent copy) in.
    def found():
        status, body = deployed.api(f"/api/sync/search?query={word}", token=token)
        assert status == 200, body
        return body["items"] if {h["folder"] for h in body["items"]} >= {"INBOX"} else None

    hits = _until("the message found by search", found)
    inbox = next(h for h in hits if h["folder"] == "INBOX")
    assert inbox["subject"] == f"Grüße {word}"
    assert f"<mark>{word}</mark>" in inbox["snippet"]
    assert inbox["from"] == {"name": "Deployed Tester", "email": MAILBOX}

    # The scheduler is alive: its heartbeat job ran on a worker within the last minutes.
    scraped = deployed.host.run("curl -fsS -k https://127.0.0.1/metrics/8001")
    assert scraped.returncode == 0, scraped.stderr
    [beat] = [
        float(line.split()[-1])
        for line in scraped.stdout.splitlines()
        if line.startswith("emailservice_heartbeat_timestamp_seconds ")
    ]
    assert time.time() - beat < 180
