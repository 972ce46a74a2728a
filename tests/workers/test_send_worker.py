"""The send worker as it runs: send jobs in the worker's own process (no work-horse forked per
message), its SMTP session kept across messages, Sent copies filed in batches."""

from __future__ import annotations

import time

import pytest

from tests.services.test_outbox import arrived, inbox, make_account
from tests.support import descendants, wait_for
from tests.workers.test_send_jobs import api_client, setting  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("empty_queues")


def test_a_send_worker_sends_without_forking_and_every_message_once_with_its_copy(setting):  # noqa: F811
    env, ctx, user, sender, recipient, running = setting
    account_id = make_account(ctx, user.tenant_id, sender)
    client = api_client(env)
    drafts = [
        client.post(
            "/api/compose",
            json={"account_id": account_id, "to": [recipient.email], "text": f"number {i}"},
            headers=user.headers,
        ).get_json()["id"]
        for i in range(5)
    ]
    worker = running.start("worker", "send")
    time.sleep(3)  # started: its scheduler of delayed jobs is a process of its own
    before = set(descendants(worker.pid))
    ids = []
    for draft_id in drafts:
        sent = client.post(f"/api/compose/{draft_id}/send", headers=user.headers)
        assert sent.status_code == 202
        ids.append(sent.get_json()["id"])

    forked: set[int] = set()

    def done() -> bool:
        forked.update(set(descendants(worker.pid)) - before)
        bodies = [client.get(f"/api/outbox/{i}", headers=user.headers).get_json() for i in ids]
        return all((b["state"], b["sent_copy"]) == ("sent", "done") for b in bodies)

    wait_for(done, timeout=90, interval=0.05)
    assert forked == set()
    message_ids = [
        client.get(f"/api/outbox/{i}", headers=user.headers).get_json()["message_id"] for i in ids
    ]
    time.sleep(1)  # anything sent twice would be here by now
    for message_id in message_ids:
        assert len(arrived(recipient, message_id)) == 1
    in_sent = [m["Message-ID"] for m in inbox(sender, "Sent")]
    assert sorted(in_sent) == sorted(message_ids)
