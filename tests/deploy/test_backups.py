"""Backups on the deployed host, checked from outside (level 4 in docs/deploy.md): the daily
pg_dump timer, its files, old dumps removed, and a restore that brings back what was lost, seen
through the API via nginx; the DKIM keys backed up beside the dumps and restored, seen in the
DNS records and in signatures that verify; the mailboxes, a deleted folder put back and seen over
IMAP; the certificate, put back and served again by nginx, Dovecot and Postfix."""

from __future__ import annotations

import imaplib
import re
import secrets
import smtplib
import socket
import ssl
import sys
import time
import uuid

import pytest

from tests.deploy.deployment import Deployment, tls, wait_for_health
from tests.deploy.dkim_mail import dns_records, received, send_8bit, signature_tags, verifies
from tests.deploy.inventory import group_data

pytestmark = pytest.mark.level4

DATA = group_data("vagrant")
BACKUPS = DATA["backup_dir"]
DATABASE = DATA["postgres_database"]
MAILBOX = next(iter(DATA["mail_users"]))


def _backup(host) -> str:
    """Run the backup unit now (as the timer does); the newest dump's path."""
    started = host.run("systemctl start emailservice-backup.service", timeout=120)
    assert started.returncode == 0, host.journal("emailservice-backup.service")
    newest = host.run(f"ls -1t {BACKUPS}/{DATABASE}-*.dump | head -1", check=True).stdout.strip()
    assert newest, "no dump was written"
    return newest


def _tenant_with_an_account(deployed: Deployment) -> tuple[str, str, str, dict]:
    """A tenant, a user and an account (credentials encrypted), made through the CLI and API."""
    tenant, password = f"backup-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    host = deployed.host
    assert host.run(f"emailservice tenant create {tenant}").returncode == 0
    created = host.run(f"emailservice user create --tenant {tenant} ops", input=password + "\n")
    assert created.returncode == 0, created.stderr
    token = deployed.login(tenant, "ops", password)
    server = {"host": "127.0.0.1", "security": "starttls", "username": "test@example.test"}
    status, account = deployed.api(
        "/api/accounts",
        token=token,
        body={
            "email": "test@example.test",
            "display_name": "Backed up",
            "imap": {**server, "port": 143, "password": secrets.token_urlsafe(12)},
            "smtp": {**server, "port": 587, "password": secrets.token_urlsafe(12)},
        },
    )
    assert status == 201, account
    return tenant, password, token, account


def test_the_backup_timer_is_daily_and_the_dumps_private(deployed):
    host = deployed.host
    assert host.run("systemctl is-enabled emailservice-backup.timer").stdout.strip() == "enabled"
    calendar = host.run("systemctl show -p TimersCalendar --value emailservice-backup.timer")
    assert DATA["backup_on_calendar"] in calendar.stdout
    path = _backup(host)
    assert host.run(f"stat -c '%a %U %G' {BACKUPS}").stdout.split() == [
        "700",
        "postgres",
        "postgres",
    ]
    assert host.run(f"stat -c '%a %U' {path}").stdout.split() == ["600", "postgres"]
    # A real custom-format dump of the service's tables.
    listing = host.run(f"pg_restore --list {path}", check=True).stdout
    assert "TABLE public alembic_version" in listing


def test_dumps_older_than_the_kept_days_are_removed(deployed):
    host, keep = deployed.host, DATA["backup_keep_days"]
    old, recent = f"{BACKUPS}/{DATABASE}-20000101T000000Z.dump", f"{BACKUPS}/{DATABASE}-x.dump"
    host.run(
        f"runuser -u postgres -- touch -d '{keep + 1} days ago' {old} && "
        f"runuser -u postgres -- touch -d '{keep - 1} days ago' {recent}",
        check=True,
    )
    _backup(host)
    assert host.run(f"test -e {old}").returncode == 1, "an old dump was kept"
    assert host.run(f"test -e {recent}").returncode == 0, "a dump within the kept days was removed"
    host.run(f"rm -f {recent}")


def test_a_restore_brings_back_what_was_lost(deployed):
    host = deployed.host
    tenant, password, token, account = _tenant_with_an_account(deployed)
    before = deployed.api("/api/accounts", token=token)
    assert before[0] == 200 and [a["id"] for a in before[1]["items"]] == [account["id"]]
    path = _backup(host)

    # Lost: the whole database.
    host.run(f"runuser -u postgres -- dropdb --force {DATABASE}", check=True)
    assert deployed.api("/health")[0] == 503

    restored = host.run(f"emailservice-restore {path}", timeout=300)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    wait_for_health(deployed.address, deployed.ca)
    # The same data, through the API: the old token still names the user, the password hash
    # still logs in, and the account with its encrypted credentials is back.
    assert deployed.api("/api/accounts", token=token) == before
    token = deployed.login(tenant, "ops", password)
    assert deployed.api(f"/api/accounts/{account['id']}", token=token) == (200, account)


def test_a_failed_restore_changes_nothing(deployed):
    host = deployed.host
    tenant, password, token, account = _tenant_with_an_account(deployed)
    host.run("head -c 4096 /dev/urandom > /root/not-a-dump", check=True)
    restored = host.run("emailservice-restore /root/not-a-dump", timeout=120)
    assert restored.returncode != 0
    assert deployed.api(f"/api/accounts/{account['id']}", token=token) == (200, account)
    databases = host.run("runuser -u postgres -- psql -XAtc 'SELECT datname FROM pg_database'")
    assert f"{DATABASE}_restoring" not in databases.stdout.split()


def test_the_dkim_keys_are_backed_up_and_restored(deployed):
    host, domain = deployed.host, DATA["mail_domain"]
    before = dns_records(host)
    _backup(host)
    archive = host.run(f"ls -1t {BACKUPS}/dkim-*.tar | head -1", check=True).stdout.strip()
    assert host.run(f"stat -c '%a %U' {archive}").stdout.split() == ["600", "root"]
    assert f"{domain}/active" in host.run(f"tar -tf {archive}").stdout

    # Lost: every key of the domain. Mail waits in the queue rather than leaving unsigned.
    host.run(f"rm -rf /etc/dkimkeys/{domain} && emailservice-dkim list", check=True)
    assert "no DKIM key yet" in host.run("emailservice-dns").stdout

    restored = host.run(f"emailservice-dkim restore {archive}")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert dns_records(host) == before  # the same keys, so the published records stay right
    subject = f"after restore {secrets.token_hex(8)}"
    send_8bit(deployed, subject)
    message, _ = received(deployed, subject)
    assert signature_tags(message)["d"] == domain
    assert verifies(message, before)


def _newest(host, pattern: str) -> str:
    found = host.run(f"ls -1dt {BACKUPS}/{pattern} | head -1", check=True).stdout.strip()
    assert found, f"no {pattern} in {BACKUPS}"
    return found


def _folder(imap: imaplib.IMAP4, name: str) -> list | None:
    """The messages of folder `name` (flags and body), or None when there is no such folder."""
    status, listed = imap.list('""', name)
    if status != "OK" or listed == [None]:
        return None
    imap.select(name, readonly=True)
    _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[TEXT])")
    imap.close()
    found = []
    for part in data:
        if isinstance(part, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", part[0]).group(1).split()
            found.append((sorted(f for f in flags if f != b"\\Recent"), part[1]))
    return sorted(found)


def _uids(imap: imaplib.IMAP4, name: str) -> tuple[int, list[int]]:
    """A folder's UIDVALIDITY and its messages' UIDs."""
    _, status = imap.status(name, "(UIDVALIDITY)")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", status[0]).group(1))
    imap.select(name, readonly=True)
    _, found = imap.uid("SEARCH", "ALL")
    imap.close()
    return validity, [int(uid) for uid in found[0].split()]


def _kept_folder(deployed: Deployment, folder: str) -> tuple[list, tuple[int, list[int]]]:
    """A new folder of two messages (one seen), made over IMAP: its messages and UIDs."""
    password = deployed.secrets["MAILBOX_TEST_PASSWORD"]
    with imaplib.IMAP4_SSL(deployed.address, 993, ssl_context=tls(deployed.ca)) as imap:
        imap.login(MAILBOX, password)
        assert imap.create(folder)[0] == "OK"
        for n, flags in ((1, "(\\Seen)"), (2, "()")):
            message = f"Subject: kept {n}\r\nFrom: a@example.test\r\n\r\nbody {n} of {folder}\r\n"
            assert imap.append(folder, flags, None, message.encode())[0] == "OK"
        return _folder(imap, folder), _uids(imap, folder)


def _delete_folder(deployed: Deployment, folder: str) -> None:
    with imaplib.IMAP4_SSL(deployed.address, 993, ssl_context=tls(deployed.ca)) as imap:
        imap.login(MAILBOX, deployed.secrets["MAILBOX_TEST_PASSWORD"])
        assert imap.delete(folder)[0] == "OK"
        assert _folder(imap, folder) is None


def _restored(deployed: Deployment, folder: str) -> tuple[list, tuple[int, list[int]]]:
    with imaplib.IMAP4_SSL(deployed.address, 993, ssl_context=tls(deployed.ca)) as imap:
        imap.login(MAILBOX, deployed.secrets["MAILBOX_TEST_PASSWORD"])
        return _folder(imap, folder), _uids(imap, folder)


def test_a_deleted_folder_comes_back_from_the_mailbox_backup(deployed):
    host, folder = deployed.host, f"Kept-{secrets.token_hex(4)}"
    before, (validity, _) = _kept_folder(deployed, folder)
    assert sorted(flags for flags, _ in before) == [[], [b"\\Seen"]]

    _backup(host)
    snapshot = _newest(host, "mail-*")
    assert host.run(f"stat -c '%a %U' {snapshot}").stdout.split() == ["700", "root"]
    _delete_folder(deployed, folder)  # lost: the user deletes the folder

    for _ in range(2):  # a second restore adds nothing
        restored = host.run(f"emailservice-files restore-mail {snapshot} {MAILBOX}", timeout=120)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        after, (new_validity, _) = _restored(deployed, folder)
        assert after == before  # the same messages, flags included
        # ... in a folder no client can take for the old one (its UIDs may be handed out again)
        assert new_validity != validity

    # A second backup of the unchanged messages links them to the first one's files.
    time.sleep(1)  # backups are named by the second
    _backup(host)
    second = host.run("journalctl -u emailservice-backup.service -n 20 -o cat").stdout
    assert "unchanged linked to " + snapshot.rsplit("/", 1)[1] in second


def test_keep_uids_restores_a_missing_folder_with_its_uids(deployed):
    """As on a new host: a folder the host does not have comes back with its UIDVALIDITY and
    UIDs, read back by Dovecot from the restored UID list."""
    host, folder = deployed.host, f"Moved-{secrets.token_hex(4)}"
    before, uids = _kept_folder(deployed, folder)
    _backup(host)
    snapshot = _newest(host, "mail-*")
    _delete_folder(deployed, folder)
    restored = host.run(
        f"emailservice-files restore-mail --keep-uids {snapshot} {MAILBOX}", timeout=120
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "1 folders kept their UIDs" in restored.stdout  # the others are still there
    assert _restored(deployed, folder) == (before, uids)


def _served(address: str, port: int, starttls: bool = False) -> bytes:
    """The certificate a server presents (not verified: the point is which one it is)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if starttls:
        with smtplib.SMTP(address, port, timeout=20) as smtp:
            smtp.starttls(context=context)
            return smtp.sock.getpeercert(binary_form=True)
    with socket.create_connection((address, port), timeout=20) as raw:
        with context.wrap_socket(raw) as wrapped:
            return wrapped.getpeercert(binary_form=True)


def _all_served(address: str) -> list[bytes]:
    return [_served(address, 443), _served(address, 993), _served(address, 587, starttls=True)]


def _until_served(address: str, wanted, timeout: float = 30) -> list[bytes]:
    """Poll until `wanted` holds for what nginx (443), Dovecot (993) and Postfix (587) serve: a
    reload is asynchronous (`systemctl reload nginx` returns once nginx is signalled; seen on
    Debian 12, its old workers still answered a connection made right after), so a new
    certificate is served within moments, not at once."""
    deadline = time.monotonic() + timeout
    while True:
        served = _all_served(address)
        if all(wanted(cert) for cert in served):
            return served
        late = [
            port for port, cert in zip((443, 993, 587), served, strict=True) if not wanted(cert)
        ]
        assert time.monotonic() < deadline, f"ports {late} still serve another certificate"
        print(f"certificate: waiting for ports {late}", file=sys.stderr)
        time.sleep(1)


def test_the_certificate_is_backed_up_and_restored(deployed):
    host = deployed.host
    cert, key = DATA["tls_cert_path"], DATA["tls_key_path"]
    original = _all_served(deployed.address)
    assert len(set(original)) == 1
    _backup(host)
    archive = _newest(host, "certificate-*.tar")
    assert host.run(f"stat -c '%a %U' {archive}").stdout.split() == ["600", "root"]
    host.run(f"cp -p {cert} /root/cert.saved && cp -p {key} /root/key.saved", check=True)
    try:
        # Lost: the certificate, replaced by another one (as a careless renewal would).
        host.run(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other "
            f"-keyout {key} -out {cert} 2>/dev/null && "
            "systemctl reload nginx postfix dovecot",
            check=True,
        )
        _until_served(deployed.address, lambda cert: cert not in original)

        restored = host.run(f"emailservice-files restore-certificate {archive}")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "reloaded nginx, postfix, dovecot" in restored.stdout
        assert _until_served(deployed.address, lambda cert: cert in original) == original
    finally:
        host.run(
            f"cmp -s /root/cert.saved {cert} || (cp -p /root/cert.saved {cert} && "
            f"cp -p /root/key.saved {key} && systemctl reload nginx postfix dovecot)"
        )
