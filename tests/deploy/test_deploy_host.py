"""Levels 3 and 4 of the deploy tests (docs/deploy.md): the deploy onto a real booted Debian 13
host and a Debian 12 host (each test runs once per release: the `deployed` fixture), twice (the
second run changes nothing), then checked from outside, as a user's server would be.

The host (tests/deploy/testhost/) is a systemd-nspawn container with systemd as PID 1 in a
network namespace of its own, reached over SSH at its own address; its packages come from a
local, read-only Debian repository (it has no internet). pyinfra deploys it over SSH with the
vagrant environment's data, exactly as `make deploy` does.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import time
import urllib.error
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.deploy.deployment import api, changed_operations, tls

MAILBOX = "test@example.test"
UNITS = [
    "postgresql.service",
    "redis-server.service",
    "dovecot.service",
    "postfix.service",
    "opendkim.service",
    "nginx.service",
    "nftables.service",
    "emailservice-api@8001.service",
    "emailservice-api@8002.service",
    "emailservice-worker@1.service",
    "emailservice-worker@2.service",
    "emailservice-scheduler.service",
    "emailservice-idle.service",
    "emailservice-healthcheck.timer",
    "emailservice-backup.timer",
]
PUBLIC_PORTS = {22, 25, 80, 443, 465, 587, 143, 993}
# 8891: OpenDKIM; 10028: Postfix's signing listener (tasks/dkim.py).
PRIVATE_PORTS = {5432, 6379, 8001, 8002, 8891, 10028}

pytestmark = pytest.mark.level4


def test_the_first_deploy_prints_no_secret(deployed):
    output = deployed.first.stdout + deployed.first.stderr
    assert "(contents hidden)" in output
    for name, value in deployed.secrets.items():
        assert value not in output, f"{name} was printed"


def test_a_second_deploy_changes_nothing(deployed):
    second = deployed.second
    assert second.returncode == 0, second.stderr[-3000:]
    assert changed_operations(second) == []
    assert json.loads(second.stdout)["results"]["operations"]  # the deploy did plan its operations
    for value in deployed.secrets.values():
        assert value not in second.stdout + second.stderr


def test_every_unit_is_active_and_enabled(deployed):
    host = deployed.host
    for unit in UNITS:
        assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert host.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit


# What each release's host runs (tasks/debian.py renders the configuration for it).
RELEASE_SERVERS = {
    "trixie": {"debian": "13", "postgresql": "17", "dovecot": "2.4.", "python": "3.13."},
    "bookworm": {"debian": "12", "postgresql": "15", "dovecot": "2.3.", "python": "3.11."},
}


def test_the_host_runs_its_releases_servers_configured_for_them(deployed):
    """The release's own PostgreSQL cluster, Dovecot and Python, each with the configuration
    written for it: a host of the other release's configuration would not have come up."""
    host, want = deployed.host, RELEASE_SERVERS[deployed.release]
    os_release = host.run("cat /etc/os-release", check=True).stdout
    assert f'VERSION_ID="{want["debian"]}"' in os_release
    assert f"VERSION_CODENAME={deployed.release}" in os_release
    pg = want["postgresql"]
    assert host.run(f"systemctl is-active postgresql@{pg}-main").stdout.strip() == "active"
    assert host.run(f"test -f /etc/postgresql/{pg}/main/conf.d/emailservice.conf").returncode == 0
    clusters = host.run("pg_lsclusters -h", check=True).stdout.split()
    assert clusters[:4] == [pg, "main", "5432", "online"], clusters
    assert host.run("dovecot --version", check=True).stdout.startswith(want["dovecot"])
    conf = host.run("doveconf -n", check=True)  # the deploy's own check, run again
    assert "Warning" not in conf.stderr, conf.stderr
    assert ("dovecot_config_version = 2.4.0" in conf.stdout) == (want["dovecot"] == "2.4.")
    python = host.run("/opt/emailservice/current/venv/bin/python -V", check=True).stdout
    assert python.split()[1].startswith(want["python"]), python
    nginx = host.run("nginx -t", check=True)  # no deprecation warning for http2 either
    assert "warn" not in nginx.stderr, nginx.stderr
    postconf = host.run("postconf 2>&1 >/dev/null", check=True)
    assert "warning" not in postconf.stdout.lower(), postconf.stdout


def _open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_only_the_intended_ports_are_reachable(deployed):
    host = deployed.host
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


def test_tls_on_465_587_and_993(deployed):
    host, ca = deployed.host, deployed.ca
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
    host, secret_values = deployed.host, deployed.secrets
    with smtplib.SMTP(host.address, 587, timeout=20) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        code, _ = smtp.docmd("AUTH", "PLAIN AGFiYwBkZWY=")
        assert code >= 500
    imap = imaplib.IMAP4(host.address, 143, timeout=20)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(MAILBOX, secret_values["MAILBOX_TEST_PASSWORD"])


def test_open_relay_is_refused(deployed):
    host = deployed.host
    with smtplib.SMTP(host.address, 25, timeout=20) as smtp:
        smtp.ehlo("outside.example.net")
        smtp.mail("someone@outside.example.net")
        code, message = smtp.rcpt("victim@elsewhere.example.org")
    assert code == 554, message


def test_a_forged_sender_is_refused(deployed):
    host, secret_values, ca = deployed.host, deployed.secrets, deployed.ca
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
    host, secret_values, ca = deployed.host, deployed.secrets, deployed.ca
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
    return api(address, ca, "/health")[0]


def test_health_through_nginx(deployed):
    host, ca = deployed.host, deployed.ca
    assert health(host.address, ca) == 200
    with urllib.request.urlopen(f"https://{host.address}/health", context=tls(ca)) as response:
        body = json.load(response)
    assert body["checks"] == {"database": "ok", "redis": "ok"}


def test_redis_refuses_a_client_without_its_password(deployed):
    host = deployed.host
    answer = (
        host.run("redis-cli -h 127.0.0.1 ping").stdout
        + host.run("redis-cli -h 127.0.0.1 ping").stderr
    )
    assert "NOAUTH" in answer


def test_the_env_file_is_0640_root_emailservice(deployed):
    host = deployed.host
    assert host.run("stat -c '%a %U %G' /etc/emailservice/emailservice.env").stdout.split() == [
        "640",
        "root",
        "emailservice",
    ]


def test_the_api_runs_as_the_service_user(deployed):
    host = deployed.host
    pid = host.run("systemctl show -p MainPID --value emailservice-api@8001").stdout.strip()
    assert pid not in ("", "0")
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "emailservice"


def test_a_killed_api_process_comes_back_by_itself(deployed):
    host, ca = deployed.host, deployed.ca
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
    host = deployed.host
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
    ca = deployed.ca
    request = urllib.request.Request(
        f"https://{host.address}/api/accounts", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, context=tls(ca), timeout=10) as response:
        assert json.load(response) == {"items": [], "next_cursor": None}


def test_metrics_are_per_instance_and_not_public(deployed):
    host = deployed.host
    assert deployed.api("/metrics")[0] == 403
    assert deployed.api("/metrics/8001")[0] == 403
    for port in (8001, 8002):
        scraped = host.run(f"curl -fsS -k https://127.0.0.1/metrics/{port}")
        assert scraped.returncode == 0, scraped.stderr
        assert "emailservice_http_requests_total" in scraped.stdout


SERVICE_UNITS = {
    "emailservice-api@8001": "api",
    "emailservice-worker@1": "worker",
    "emailservice-scheduler": "scheduler",
    "emailservice-idle": "idle",
    "emailservice-migrate": "migrate",
}


def test_units_carry_their_resource_limits(deployed):
    """The configured values, as systemd reads them. Whether MemoryMax and TasksMax bite
    cannot be shown here: the test host's cgroup controllers are read-only (docs/security.md)."""
    from tests.deploy.inventory import group_data

    limits = group_data("vagrant")["unit_limits"]
    sizes = {"G": 1024**3, "M": 1024**2}
    for unit, kind in SERVICE_UNITS.items():
        shown = deployed.host.run(
            f"systemctl show -p MemoryMax -p TasksMax -p LimitNOFILE -p NoNewPrivileges {unit}"
        ).stdout
        values = dict(line.split("=", 1) for line in shown.split())
        memory = limits[kind]["memory_max"]
        assert values["MemoryMax"] == str(int(memory[:-1]) * sizes[memory[-1]]), unit
        assert values["TasksMax"] == str(limits[kind]["tasks_max"]), unit
        assert values["LimitNOFILE"] == str(limits[kind]["nofile"]), unit
        assert values["NoNewPrivileges"] == "yes", unit


# Run by the service's own Python: what a unit's process may do with sockets and ptrace.
PROBE = r"""
import ctypes, json, os, socket
result = {}
for name, family, kind in [
    ("inet", socket.AF_INET, socket.SOCK_STREAM),
    ("unix", socket.AF_UNIX, socket.SOCK_STREAM),
    ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
    ("packet", socket.AF_PACKET, socket.SOCK_RAW),
]:
    try:
        socket.socket(family, kind).close()
        result[name] = "ok"
    except OSError as exc:
        result[name] = os.strerror(exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
result["ptrace"] = "ok" if libc.ptrace(0, 0, None, None) == 0 else os.strerror(ctypes.get_errno())
print(json.dumps(result))
"""


def test_syscall_filter_and_address_families_bite_in_the_units(deployed):
    """The API unit's settings, exactly as deployed, applied to a probe: the unit file is
    copied with only its command replaced, started, and compared with the same probe run as
    the same user outside any unit."""
    host = deployed.host
    python = "/opt/emailservice/current/venv/bin/python"
    host.run("cat > /run/emailservice-probe.py", input=PROBE, check=True)
    outside = json.loads(
        host.run(f"runuser -u emailservice -- {python} /run/emailservice-probe.py").stdout
    )
    # Outside: netlink and ptrace work for an ordinary user (packet sockets need privileges).
    assert outside == {
        "inet": "ok",
        "unix": "ok",
        "netlink": "ok",
        "packet": "Operation not permitted",
        "ptrace": "ok",
    }
    unit = "/run/systemd/system/emailservice-probe.service"
    copied = host.run(
        "sed -e 's|^ExecStart=.*|ExecStart=" + python + " /run/emailservice-probe.py|'"
        " -e 's|^Type=.*|Type=oneshot|' -e '/^Restart/d'"
        " -e 's|^\\[Service\\]|[Service]\\nStandardOutput=file:/run/emailservice-probe.json|'"
        f" /etc/systemd/system/emailservice-api@.service > {unit}"
        " && systemctl daemon-reload && systemctl start emailservice-probe"
    )
    try:
        assert copied.returncode == 0, copied.stderr
        inside = json.loads(host.run("cat /run/emailservice-probe.json").stdout)
    finally:
        host.run(
            f"rm -f {unit} /run/emailservice-probe.json /run/emailservice-probe.py"
            " && systemctl daemon-reload"
        )
    assert inside == {
        "inet": "ok",
        "unix": "ok",
        # RestrictAddressFamilies: other families do not exist for the unit.
        "netlink": "Address family not supported by protocol",
        "packet": "Address family not supported by protocol",
        # SystemCallFilter=@system-service: ptrace is not in it (EPERM, SystemCallErrorNumber).
        "ptrace": "Operation not permitted",
    }
    # And the running API process itself is under a seccomp filter, without new privileges.
    pid = host.run("systemctl show -p MainPID --value emailservice-api@8001").stdout.strip()
    status = dict(
        line.split(":\t", 1) for line in host.run(f"cat /proc/{pid}/status").stdout.splitlines()
    )
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"


def https_headers(deployed, path: str) -> dict[str, str]:
    request = urllib.request.Request(f"https://{deployed.host.address}{path}")
    try:
        with urllib.request.urlopen(request, context=tls(deployed.ca), timeout=10) as response:
            headers = response.headers
    except urllib.error.HTTPError as error:
        headers = error.headers
    return {name: headers.get_all(name) for name in headers.keys()}


def test_nginx_sends_the_security_headers(deployed):
    for path in ("/health", "/api/accounts", "/no-such-page", "/docs"):
        headers = https_headers(deployed, path)
        assert headers["Strict-Transport-Security"] == ["max-age=31536000"], path
        assert headers["X-Content-Type-Options"] == ["nosniff"], path  # once, not twice
        assert headers["X-Frame-Options"] == ["DENY"], path
        assert headers["Referrer-Policy"] == ["no-referrer"], path
        [csp] = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp, path
        if path == "/docs":
            assert "script-src 'self'" in csp
        else:
            assert csp.startswith("default-src 'none';"), path


def test_nginx_limits_a_burst_of_logins(deployed):
    """From one address (the host itself), a burst beyond nginx's limit_req is refused by
    nginx (no X-Request-ID: the API never saw it), in the API's error shape.

    Every answer of the burst is looked at, not one more request afterwards: nginx lets one
    request through every 2 s (30 a minute), and on a loaded machine a request sent after the
    burst may pass nginx and meet the API's own per-address limit instead."""
    body = json.dumps({"tenant": f"t-{uuid.uuid4().hex[:8]}", "username": "x", "password": "y"})
    curl = (
        "curl -sk -D - -X POST -H 'Content-Type: application/json'"
        f" -d '{body}' https://127.0.0.1/auth/login"
    )
    out = deployed.host.run(f"for i in $(seq 1 25); do {curl}; echo; echo =====; done").stdout
    answers = [a.strip() for a in out.split("=====") if a.strip()]
    assert len(answers) == 25, out[-2000:]
    by_nginx = []
    for answer in answers:
        head, _, payload = answer.partition("\n\n")  # (the output's CRLF arrive as LF)
        if head.split()[1] == "429" and "x-request-id" not in head.lower():
            by_nginx.append((head.lower(), payload))
    assert len(by_nginx) >= 10, [a.split()[1] for a in answers]
    for head, payload in by_nginx:
        assert "retry-after: 60" in head
        assert json.loads(payload)["error"]["code"] == "rate_limited"


def test_dovecot_users_are_argon2id_hashes(deployed):
    hashes = deployed.host.run("cut -d: -f2 /etc/dovecot/users").stdout.split()
    assert hashes and all(h.startswith("{ARGON2ID}$argon2id$") for h in hashes)


def test_the_service_may_reach_exactly_the_hosts_own_mail_servers(deployed):
    line = deployed.host.run(
        "grep '^ALLOWED_PRIVATE_HOSTS=' /etc/emailservice/emailservice.env"
    ).stdout.strip()
    assert line == ("ALLOWED_PRIVATE_HOSTS=127.0.0.1:143,127.0.0.1:993,127.0.0.1:587,127.0.0.1:465")


def test_secret_files_leave_no_staging_files_behind(deployed):
    leftovers = deployed.host.run(
        "ls -a /etc/emailservice /etc/dovecot /etc/redis /etc/postgresql/*/main 2>/dev/null"
        " | grep -E '^\\.(emailservice|users|emailservice-auth).*\\.[0-9a-f]{32}$';"
        " ls -d /tmp/pyinfra-*.d 2>/dev/null"
    ).stdout
    assert leftovers == ""
