"""DEPLOY.md levels 3 and 4: the deploy onto a real booted Debian 12 host, twice, then checked
from outside, as a user's server would be.

The host (tests/deploy/testhost.py) is a systemd-nspawn container with systemd as PID 1 in a
network namespace of its own, reached over SSH at its own address; its packages come from a
local, read-only Debian repository (it has no internet). pyinfra deploys it over SSH with the
vagrant environment's data, exactly as `make deploy` does.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import secrets
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.deploy.inventory import group_data
from tests.deploy.testhost import boot_test_host, ensure_tools

ROOT = Path(__file__).resolve().parents[2]
MAILBOX = "test@example.test"
UNITS = [
    "postgresql.service",
    "redis-server.service",
    "dovecot.service",
    "postfix.service",
    "nginx.service",
    "nftables.service",
    "emailservice-api@8001.service",
    "emailservice-api@8002.service",
    "emailservice-worker@1.service",
    "emailservice-worker@2.service",
    "emailservice-scheduler.service",
    "emailservice-idle.service",
    "emailservice-healthcheck.timer",
]
PUBLIC_PORTS = {22, 25, 80, 443, 465, 587, 143, 993}
PRIVATE_PORTS = {5432, 6379, 8001, 8002}

pytestmark = pytest.mark.level4


def pyinfra(inventory: Path, environ: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("pyinfra")),
            "-y",
            "--group-data",
            "inventories/group_data",
            str(inventory),
            "deploy.py",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A booted host deployed twice; yields (host, secrets, first run, second run, ca file)."""
    ensure_tools()
    secret_values = {
        "JWT_SECRET": secrets.token_urlsafe(40),
        "ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "MAILBOX_TEST_PASSWORD": secrets.token_urlsafe(18),
    }
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    tmp = tmp_path_factory.mktemp("deploy")
    with boot_test_host(uuid.uuid4().hex[:6], group_data("vagrant")["packages"]) as host:
        inventory = tmp / "vagrant.py"
        inventory.write_text(
            "vagrant = [(%r, {'ssh_user': 'root', 'ssh_key': %r, "
            "'ssh_strict_host_key_checking': 'no', 'ssh_known_hosts_file': '/dev/null'})]\n"
            % (host.address, str(host.ssh_key))
        )
        started = time.monotonic()
        first = pyinfra(inventory, environ, "--diff")
        print(f"first deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        if first.returncode != 0:
            pytest.fail(f"first deploy failed:\n{first.stdout[-6000:]}\n{first.stderr[-3000:]}")
        started = time.monotonic()
        second = pyinfra(inventory, environ, "--json")
        print(f"second deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        ca = tmp / "host-cert.pem"
        ca.write_text(host.run("cat /etc/emailservice/tls/cert.pem").stdout)
        yield host, secret_values, first, second, ca


def test_the_first_deploy_prints_no_secret(deployed):
    _, secret_values, first, _, _ = deployed
    output = first.stdout + first.stderr
    assert "(contents hidden)" in output
    for name, value in secret_values.items():
        assert value not in output, f"{name} was printed"


def test_a_second_deploy_changes_nothing(deployed):
    _, secret_values, _, second, _ = deployed
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads(second.stdout)["results"]
    changed = [op["name"] for op in results["operations"] if op["success"]]
    assert changed == []
    assert results["operations"]  # the deploy did plan its operations
    for value in secret_values.values():
        assert value not in second.stdout + second.stderr


def test_every_unit_is_active_and_enabled(deployed):
    host = deployed[0]
    for unit in UNITS:
        assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit


def _open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_only_the_intended_ports_are_reachable(deployed):
    host = deployed[0]
    for port in PUBLIC_PORTS:
        assert _open(host.address, port), f"{port} should be open"
    for port in PRIVATE_PORTS:
        assert not _open(host.address, port), f"{port} must not be reachable from outside"
    # And inside, the private services listen on loopback only.
    listening = host.run("ss -Htln").stdout
    for port in PRIVATE_PORTS:
        addresses = {
            line.split()[3].rsplit(":", 1)[0]
            for line in listening.splitlines()
            if line.split()[3].endswith(f":{port}")
        }
        assert addresses and addresses <= {"127.0.0.1", "[::1]"}, (port, addresses)


def tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def test_tls_on_465_587_and_993(deployed):
    host, _, _, _, ca = deployed
    with smtplib.SMTP_SSL(host.address, 465, context=tls(ca), timeout=20) as smtp:
        assert smtp.noop()[0] == 250
    with smtplib.SMTP(host.address, 587, timeout=20) as smtp:
        smtp.starttls(context=tls(ca))
        assert smtp.noop()[0] == 250
    imap = imaplib.IMAP4_SSL(host.address, 993, ssl_context=tls(ca), timeout=20)
    imap.logout()
    imap = imaplib.IMAP4(host.address, 143, timeout=20)
    imap.starttls(ssl_context=tls(ca))
    imap.logout()


def test_auth_is_refused_before_starttls(deployed):
    host, secret_values, _, _, _ = deployed
    with smtplib.SMTP(host.address, 587, timeout=20) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN AGFiYwBkZWY=")
        assert code >= 500
    imap = imaplib.IMAP4(host.address, 143, timeout=20)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(MAILBOX, secret_values["MAILBOX_TEST_PASSWORD"])


def test_open_relay_is_refused(deployed):
    host = deployed[0]
    with smtplib.SMTP(host.address, 25, timeout=20) as smtp:
        smtp.ehlo("outside.example.net")
        smtp.mail("someone@outside.example.net")
        code, message = smtp.rcpt("victim@elsewhere.example.org")
    assert code == 554, message


def test_a_forged_sender_is_refused(deployed):
    host, secret_values, _, _, ca = deployed
    # From outside, unauthenticated, claiming to be one of the host's users.
    with smtplib.SMTP(host.address, 25, timeout=20) as smtp:
        smtp.ehlo("outside.example.net")
        code, _ = smtp.mail(MAILBOX)
        if code < 400:
            code, _ = smtp.rcpt(MAILBOX)
    assert code >= 500
    # Logged in as test@, sending as someone else of the domain.
    with smtplib.SMTP(host.address, 587, timeout=20) as smtp:
        smtp.starttls(context=tls(ca))
        smtp.login(MAILBOX, secret_values["MAILBOX_TEST_PASSWORD"])
        code, _ = smtp.mail("postmaster@example.test")
        if code < 400:
            code, _ = smtp.rcpt(MAILBOX)
    assert code >= 500


def test_mail_sent_on_587_arrives_over_imap(deployed):
    host, secret_values, _, _, ca = deployed
    password = secret_values["MAILBOX_TEST_PASSWORD"]
    subject = f"deployed {uuid.uuid4().hex}"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = MAILBOX, MAILBOX, subject
    message.set_content("through submission, into Dovecot")
    with smtplib.SMTP(host.address, 587, timeout=20) as smtp:
        smtp.starttls(context=tls(ca))
        smtp.login(MAILBOX, password)
        smtp.send_message(message)

    def arrived() -> bool:
        imap = imaplib.IMAP4_SSL(host.address, 993, ssl_context=tls(ca), timeout=20)
        try:
            imap.login(MAILBOX, password)
            imap.select("INBOX", readonly=True)
            _, found = imap.search(None, "SUBJECT", f'"{subject}"')
            return bool(found[0].split())
        finally:
            imap.logout()

    deadline = time.monotonic() + 30
    while not arrived():
        assert time.monotonic() < deadline, "the message did not arrive"
        time.sleep(0.5)


def health(address: str, ca: Path) -> int:
    try:
        with urllib.request.urlopen(f"https://{address}/health", context=tls(ca), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_health_through_nginx(deployed):
    host, _, _, _, ca = deployed
    assert health(host.address, ca) == 200
    with urllib.request.urlopen(f"https://{host.address}/health", context=tls(ca)) as response:
        body = json.load(response)
    assert body["checks"] == {"database": "ok", "redis": "ok"}


def test_redis_refuses_a_client_without_its_password(deployed):
    host = deployed[0]
    answer = (
        host.run("redis-cli -h 127.0.0.1 ping").stdout
        + host.run("redis-cli -h 127.0.0.1 ping").stderr
    )
    assert "NOAUTH" in answer


def test_the_env_file_is_0640_root_emailservice(deployed):
    host = deployed[0]
    assert host.run("stat -c '%a %U %G' /etc/emailservice/emailservice.env").stdout.split() == [
        "640",
        "root",
        "emailservice",
    ]


def test_the_api_runs_as_the_service_user(deployed):
    host = deployed[0]
    pid = host.run("systemctl show -p MainPID --value emailservice-api@8001").stdout.strip()
    assert pid not in ("", "0")
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "emailservice"


def test_a_killed_api_process_comes_back_by_itself(deployed):
    host, _, _, _, ca = deployed
    unit = "emailservice-api@8001"
    before = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    host.run(f"kill -9 {before}")
    deadline = time.monotonic() + 30
    while True:
        after = host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        if (
            after not in ("", "0", before)
            and host.run("curl -fsS -m 5 -o /dev/null http://127.0.0.1:8001/health").returncode == 0
        ):
            break
        assert time.monotonic() < deadline, f"{unit} did not come back"
        time.sleep(0.5)
    assert health(host.address, ca) == 200


def test_operators_run_the_cli_with_the_deployed_settings(deployed):
    host = deployed[0]
    check = host.run("emailservice check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert [line.split(":")[0] for line in check.stdout.splitlines()] == [
        "PASS environment",
        "PASS database",
        "PASS migrations",
        "PASS redis",
    ]
    assert host.run("emailservice tenant create deployed").returncode == 0
    created = host.run(
        "emailservice user create --tenant deployed ops", input="a long enough password\n"
    )
    assert created.returncode == 0, created.stderr
    token = host.run("emailservice token --tenant deployed ops").stdout.strip()
    ca = deployed[4]
    request = urllib.request.Request(
        f"https://{host.address}/api/accounts", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, context=tls(ca), timeout=10) as response:
        assert json.load(response) == {"items": [], "next_cursor": None}
