"""A mail round trip through a running `make dev`, run on the machine where it runs (inside the
booted host of tests/deploy/test_devstack_trixie.py): standard library only.

    python tests/deploy/dev_roundtrip.py STATE_DIR API
    python tests/deploy/dev_roundtrip.py STATE_DIR API --kept SUBJECT

Logs in as the demo user (password from STATE_DIR/env), waits until the demo seed's sample mail
is in alice's synced INBOX, sends a draft to alice through the API (the worker hands it to the
stack's Postfix over submission with SASL, Postfix to Dovecot over LMTP), waits until the outbox
entry is `sent` with its copy in Sent and the message is back in INBOX (brought in by the IDLE
watcher, no sync requested), then prints what it saw as one JSON object. Any failure: one line
on stderr and exit status 1. With --kept, after a restart: only checks that the demo account
and the message with SUBJECT are still there (the dev stack keeps its data), and prints them.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The demo seed's tenant, user and mailbox (devstack/seed.py).
TENANT, USER, MAILBOX = "demo", "demo", "alice@example.test"
SAMPLE_SUBJECTS = {"Lunch on Thursday?", "Quarterly report", "Grüße aus München"}


class Failed(Exception):
    pass


def request(
    base: str, method: str, path: str, token: str | None = None, body: dict | None = None, **headers
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json", **headers}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def until(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 1.5) -> Any:
    """Poll `check` until it returns something true (slowly: 60 API requests a minute)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise Failed(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def env_file(state_dir: Path) -> dict[str, str]:
    lines = (state_dir / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def login(state_dir: Path, base: str) -> tuple[str, dict, Callable[[], list[dict]]]:
    """A token of the demo user, its one account, and a function listing that account's INBOX."""
    password = env_file(state_dir)["DEMO_PASSWORD"]
    status, body = request(
        base, "POST", "/auth/login", body={"tenant": TENANT, "username": USER, "password": password}
    )
    if status != 200:
        raise Failed(f"POST /auth/login answered {status}: {body}")
    token = body["access_token"]
    status, accounts = request(base, "GET", "/api/accounts", token)
    if status != 200 or len(accounts["items"]) != 1:
        raise Failed(f"GET /api/accounts answered {status}: {accounts}")
    account = accounts["items"][0]
    inbox_path = f"/api/accounts/{account['id']}/messages?folder=INBOX&limit=100"

    def inbox() -> list[dict]:
        status, page = request(base, "GET", inbox_path, token)
        if status != 200:
            raise Failed(f"GET {inbox_path} answered {status}: {page}")
        return page["items"]

    return token, account, inbox


def kept(state_dir: Path, base: str, subject: str) -> dict[str, Any]:
    _, account, inbox = login(state_dir, base)
    subjects = sorted(m["subject"] for m in inbox())
    if subject not in subjects:
        raise Failed(f"{subject!r} is no longer in INBOX: {subjects}")
    return {"account": {k: account[k] for k in ("id", "email", "state")}, "subjects": subjects}


def roundtrip(state_dir: Path, base: str) -> dict[str, Any]:
    token, account, inbox = login(state_dir, base)

    def seeded() -> list[dict] | None:
        items = inbox()
        return items if SAMPLE_SUBJECTS <= {m["subject"] for m in items} else None

    synced = until("the demo seed's sample mail synced into INBOX", seeded)

    subject = f"Round trip {uuid.uuid4().hex[:10]}"
    status, draft = request(
        base,
        "POST",
        "/api/compose",
        token,
        {"account_id": account["id"], "to": [MAILBOX], "subject": subject, "text": "Hello."},
    )
    if status != 201:
        raise Failed(f"POST /api/compose answered {status}: {draft}")
    status, entry = request(
        base, "POST", f"/api/compose/{draft['id']}/send", token, {}, **{"Idempotency-Key": subject}
    )
    if status != 202:
        raise Failed(f"POST /api/compose/{draft['id']}/send answered {status}: {entry}")

    def sent() -> dict | None:
        status, body = request(base, "GET", f"/api/outbox/{entry['id']}", token)
        if status != 200 or body["state"] in ("failed", "uncertain"):
            raise Failed(f"outbox entry {entry['id']}: {status} {body}")
        return body if body["state"] == "sent" and body["sent_copy"] == "done" else None

    outbox = until("the outbox entry sent and filed in Sent", sent)

    def delivered() -> dict | None:
        return next((m for m in inbox() if m["subject"] == subject), None)

    arrived = until("the sent message synced back into INBOX", delivered, timeout=90)
    return {
        "account": {k: account[k] for k in ("id", "email", "state")},
        "seeded_subjects": sorted(m["subject"] for m in synced),
        "subject": subject,
        "outbox": {k: outbox[k] for k in ("state", "attempts", "sent_copy", "smtp_reply")},
        "delivered": {"subject": arrived["subject"], "from": arrived["from"]},
    }


def main(argv: list[str]) -> int:
    state_dir, base = Path(argv[0]), argv[1].rstrip("/")
    try:
        if argv[2:3] == ["--kept"]:
            print(json.dumps(kept(state_dir, base, argv[3])))
        else:
            print(json.dumps(roundtrip(state_dir, base)))
    except (Failed, OSError, KeyError, ValueError) as exc:
        print(f"round trip failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
