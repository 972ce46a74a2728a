"""`make dev`'s demo data: a tenant, a user, and alice's mailbox connected and synced.

Everything goes through the service's own front doors (the CLI and the REST API), so the
demo also shows how a user sets things up. Idempotent: a second `make dev` reuses it all.
"""

from __future__ import annotations

import json
import secrets
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from devstack.errors import StackError
from devstack.stack import StackInfo

TENANT = "demo"
USER = "demo"
MAILBOX = "alice@example.test"


def cli(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        input=stdin,
        text=True,
        capture_output=True,
        check=False,
    )


def api(
    base: str, method: str, path: str, token: str, body: dict | None = None
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for_api(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (503 while a dependency starts is fine here)
        except OSError:
            time.sleep(0.2)
    raise StackError(f"the API did not answer on {base} within {timeout:.0f} s")


def sample_mail(to: str) -> list[bytes]:
    """A handful of realistic messages: plain, HTML, an attachment, non-ASCII headers."""
    start = datetime.now(timezone.utc) - timedelta(days=3)
    samples = [
        (
            "Bob Example <bob@example.test>",
            "Lunch on Thursday?",
            "Are you free at noon?",
            None,
            None,
        ),
        (
            "Carol <carol@example.test>",
            "Quarterly report",
            "The report is attached.",
            None,
            ("report.csv", b"quarter,revenue\nQ1,100\nQ2,120\n"),
        ),
        ("Jörg Müller <jorg@example.test>", "Grüße aus München", "Bis bald!", None, None),
        (
            "Newsletter <news@example.test>",
            "This week in mail",
            "Plain text version.",
            "<h1>This week</h1><p>HTML <b>version</b>.</p>",
            None,
        ),
        ("Bob Example <bob@example.test>", "Re: Lunch on Thursday?", "Noon works.", None, None),
    ]
    messages = []
    for i, (sender, subject, text, html, attachment) in enumerate(samples):
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = sender, to, subject
        msg["Date"] = format_datetime(start + timedelta(hours=7 * i))
        msg["Message-ID"] = make_msgid(domain="example.test")
        msg.set_content(text)
        if html:
            msg.add_alternative(html, subtype="html")
        if attachment:
            msg.add_attachment(
                attachment[1], maintype="text", subtype="csv", filename=attachment[0]
            )
        messages.append(msg.as_bytes())
    return messages


def seed(info: StackInfo, env: dict[str, str], base: str, password: str) -> tuple[str, int]:
    """Make sure the demo data exists; return (a fresh token, the demo account's id)."""
    created = cli(["tenant", "create", TENANT], env)
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise StackError(f"tenant create failed: {created.stderr.strip()}")
    made = cli(["user", "create", "--tenant", TENANT, USER], env, stdin=password + "\n")
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise StackError(f"user create failed: {made.stderr.strip()}")
    printed = cli(["token", "--tenant", TENANT, USER], env)
    if printed.returncode != 0:
        raise StackError(f"token failed: {printed.stderr.strip()}")
    token = printed.stdout.strip()

    wait_for_api(base)
    status, listed = api(base, "GET", "/api/accounts", token)
    if status != 200:
        raise StackError(f"GET /api/accounts answered {status}: {listed}")
    if listed["items"]:
        return token, listed["items"][0]["id"]

    with smtplib.SMTP(info.host, info.smtp_port, timeout=30) as smtp:
        for raw in sample_mail(MAILBOX):
            smtp.sendmail("demo-sender@example.test", [MAILBOX], raw)
    server = {
        "host": info.host,
        "username": MAILBOX,
        "password": info.users[MAILBOX],
        "security": "starttls",
    }
    status, account = api(
        base,
        "POST",
        "/api/accounts",
        token,
        {
            "email": MAILBOX,
            "display_name": "Alice (demo)",
            "verify": True,
            "imap": {**server, "port": info.imap_port},
            "smtp": {**server, "port": info.submission_port},
        },
    )
    if status != 201:
        raise StackError(f"POST /api/accounts answered {status}: {account}")
    api(base, "POST", f"/api/sync/imap/{account['id']}", token)
    return token, account["id"]


def demo_password(info: StackInfo) -> dict[str, str]:
    """The demo user's password, made once and kept in the stack's env file."""
    if "DEMO_PASSWORD" in info.extra_env:
        return {}
    return {"DEMO_PASSWORD": secrets.token_urlsafe(12)}


def curl_lines(base: str, token: str, account_id: int) -> str:
    auth = '-H "Authorization: Bearer $TOKEN"'
    return "\n".join(
        [
            f"  export TOKEN={token}",
            f"  curl -s {auth} {base}/api/accounts",
            f"  curl -s {auth} {base}/api/accounts/{account_id}/folders",
            f"  curl -s {auth} {base}/api/sync/status/{account_id}",
            f"  curl -s {auth} '{base}/api/accounts/{account_id}/messages?folder=INBOX'",
            f"  curl -s {auth} '{base}/api/sync/search?query=lunch'",
            f"  curl -s {auth} "
            f"'{base}/api/sync/search?query=from:bob%20has:attachment%20OR%20report'",
            f"  curl -s -X POST {auth} {base}/api/sync/imap/{account_id}",
            "  # a draft to yourself; send it (the answer holds its outbox id); watch it:",
            f"  curl -s {auth} -H 'Content-Type: application/json' {base}/api/compose -d "
            f'\'{{"account_id": {account_id}, "to": ["{MAILBOX}"], '
            '"subject": "Hello from the API", "text": "It works."}\'',
            f"  curl -s -X POST {auth} -H 'Idempotency-Key: demo-1' "
            f"{base}/api/compose/DRAFT_ID/send",
            f"  curl -s {auth} {base}/api/outbox/OUTBOX_ID",
        ]
    )
