"""Split roles on two booted hosts, deployed and checked from outside (levels 3 and 4 in
docs/deploy.md): an app host (api + workers: the API behind nginx, workers, scheduler, IDLE
watcher) and a data/mail host (db + mail: PostgreSQL, Redis, backups, Dovecot, Postfix), joined by
a private network, deployed together by one pyinfra run as the production example lays them out
(inventories/production.py), then checked: the API works through nginx on the app host with its
data on the other; the data host's PostgreSQL and Redis answer the app host, with passwords, and
nobody else."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from tests.deploy.conftest import new_secrets
from tests.deploy.deployment import (
    api,
    changed_operations,
    failure_summary,
    pyinfra,
    snapshot,
    wait_for_health,
    write_inventory,
)
from tests.deploy.inventory import all_packages
from tests.deploy.testhost import boot_test_host, ensure_tools, private_link

pytestmark = pytest.mark.level4

APP_UNITS = [
    "nginx.service",
    "emailservice-api@8001.service",
    "emailservice-api@8002.service",
    "emailservice-worker@1.service",
    "emailservice-worker@2.service",
    "emailservice-scheduler.service",
    "emailservice-idle.service",
    "emailservice-healthcheck.timer",
]
DATA_UNITS = [
    "postgresql.service",
    "redis-server.service",
    "dovecot.service",
    "postfix.service",
]
DEPLOYED_PYTHON = (
    "cd /var/lib/emailservice && runuser -u emailservice -- sh -c "
    "'set -a; . /etc/emailservice/emailservice.env; set +a; "
    "exec /opt/emailservice/current/venv/bin/python -'"
)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    ensure_tools()
    tmp = tmp_path_factory.mktemp("split")
    source = snapshot(tmp / "source")
    secret_values = new_secrets("DATABASE_PASSWORD")
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    packages, tag = all_packages("vagrant"), uuid.uuid4().hex[:5]
    # Leaving private_link powers both hosts off at once, while their link still stands.
    with (
        boot_test_host(f"d{tag}", packages, hostname="data") as data,
        boot_test_host(f"a{tag}", packages, hostname="app") as app,
        private_link(app, data) as (app_private, data_private),
    ):
        inventory = write_inventory(
            tmp / "vagrant.py",
            {
                "vagrant": [
                    (app.address, {**app.pyinfra_host_data(), "private_address": app_private}),
                    (data.address, {**data.pyinfra_host_data(), "private_address": data_private}),
                ],
                "api": [app.address],
                "workers": [app.address],
                "db": [data.address],
                "mail": [data.address],
            },
        )
        started = time.monotonic()
        first = pyinfra(source, inventory, environ, "--diff")
        print(f"split deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        if first.returncode != 0:
            pytest.fail(f"split deploy failed:\n{failure_summary(first)}")
        second = pyinfra(source, inventory, environ, "--json")
        ca = tmp / "app-cert.pem"
        ca.write_text(app.run("cat /etc/emailservice/tls/cert.pem", check=True).stdout)
        yield SimpleNamespace(
            app=app,
            data=data,
            app_private=app_private,
            data_private=data_private,
            ca=ca,
            first=first,
            second=second,
            secret_values=secret_values,
        )


def _open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_the_split_deploy_prints_no_secret_and_a_second_changes_nothing(split):
    assert split.second.returncode == 0, split.second.stderr[-3000:]
    assert changed_operations(split.second) == []
    for name, value in split.secret_values.items():
        assert value not in split.first.stdout + split.first.stderr, f"{name} was printed"
        assert value not in split.second.stdout + split.second.stderr, f"{name} was printed"


def test_each_host_runs_its_roles_only(split):
    for host, mine, theirs in (
        (split.app, APP_UNITS, DATA_UNITS),
        (split.data, DATA_UNITS, APP_UNITS),
    ):
        for unit in mine:
            assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        for unit in theirs:
            assert host.run(f"systemctl is-active {unit}").stdout.strip() != "active", unit
    # The firewall opens the ports of each host's roles only.
    assert [p for p in (22, 80, 443, 25, 587, 993) if _open(split.app.address, p)] == [22, 80, 443]
    assert [p for p in (22, 80, 443, 25, 587, 993) if _open(split.data.address, p)] == [
        22,
        25,
        587,
        993,
    ]


def test_each_host_backs_up_what_it_keeps(split):
    """The data host: the database, DKIM keys, mailboxes and its certificate; the app host:
    its certificate only (it keeps nothing else)."""
    kept = {}
    for name, host in (("app", split.app), ("data", split.data)):
        started = host.run("systemctl start emailservice-backup.service", timeout=120)
        assert started.returncode == 0, host.journal("emailservice-backup.service")
        listing = host.run("ls -1 /var/backups/emailservice", check=True).stdout.split()
        kept[name] = sorted({entry.split("-")[0] for entry in listing})
    assert kept == {
        "app": ["certificate"],
        "data": ["certificate", "dkim", "emailservice", "mail"],
    }


def test_the_api_on_the_app_host_uses_the_data_host(split):
    app = split.app
    wait_for_health(app.address, split.ca)
    status, body = api(app.address, split.ca, "/health")
    assert (status, body["checks"]) == (200, {"database": "ok", "redis": "ok"})
    # Its settings name the data host's private address (checked without printing them).
    settings = "/etc/emailservice/emailservice.env"
    for pattern in (
        f"^DATABASE_URL=.*@{split.data_private}:5432/",
        f"^REDIS_URL=.*@{split.data_private}:6379/",
    ):
        assert app.run(f"grep -qE '{pattern}' {settings}").returncode == 0, pattern
    check = app.run("emailservice check")
    assert check.returncode == 0, check.stdout + check.stderr
    # Written on the app host, stored on the data host, read back through nginx.
    tenant = f"split-{uuid.uuid4().hex[:8]}"
    assert app.run(f"emailservice tenant create {tenant}").returncode == 0
    assert (
        app.run(f"emailservice user create --tenant {tenant} ops", input="x" * 20).returncode == 0
    )
    token = app.run(f"emailservice token --tenant {tenant} ops").stdout.strip()
    assert api(app.address, split.ca, "/api/accounts", token=token) == (
        200,
        {"items": [], "next_cursor": None},
    )
    slug = split.data.run(
        "runuser -u postgres -- psql -XAt emailservice -c "
        f"\"SELECT slug FROM tenants WHERE slug = '{tenant}'\""
    )
    assert slug.stdout.strip() == tenant


def test_the_data_host_lets_only_the_app_host_reach_postgres_and_redis(split):
    data_private = split.data_private
    # This machine reaches the data host's private address (SSH answers there) ...
    assert _open(data_private, 22)
    # ... but is not an app host: PostgreSQL and Redis stay shut, there and on its public address.
    for port in (5432, 6379):
        assert not _open(data_private, port), f"{port} reachable from a non-app address"
        assert not _open(split.data.address, port), f"{port} reachable on the public address"
    # The app host gets through.
    for port in (5432, 6379):
        reach = split.app.run(f"timeout 5 bash -c '</dev/tcp/{data_private}/{port}'")
        assert reach.returncode == 0, f"the app host cannot reach {data_private}:{port}"
    # And the data host listens on loopback and its private address only.
    listening = split.data.run("ss -Htln").stdout
    for port in (5432, 6379):
        addresses = {
            line.split()[3].rsplit(":", 1)[0]
            for line in listening.splitlines()
            if line.split()[3].endswith(f":{port}")
        }
        assert addresses <= {"127.0.0.1", "[::1]", data_private}, (port, addresses)
        assert data_private in addresses


WRONG_PASSWORDS = """
import os, psycopg, redis
from urllib.parse import urlsplit
db = urlsplit(os.environ["DATABASE_URL"])
try:
    psycopg.connect(host=db.hostname, port=db.port, dbname="emailservice", user="emailservice",
                    password="wrong-password", connect_timeout=5)
    print("postgres: accepted a wrong password")
except psycopg.OperationalError as error:
    print("postgres: refused:", "password authentication failed" in str(error))
r = urlsplit(os.environ["REDIS_URL"])
try:
    redis.Redis(host=r.hostname, port=r.port, socket_timeout=5).ping()
    print("redis: accepted no password")
except redis.exceptions.AuthenticationError:
    print("redis: refused: True")
"""


def test_postgres_and_redis_over_the_network_need_their_passwords(split):
    result = split.app.run(DEPLOYED_PYTHON, input=WRONG_PASSWORDS)
    assert result.stdout.split("\n")[:2] == ["postgres: refused: True", "redis: refused: True"], (
        result.stdout + result.stderr
    )
    # The role's password is stored as a SCRAM-SHA-256 verifier, not MD5 or plain.
    stored = split.data.run(
        "runuser -u postgres -- psql -XAt -c "
        "\"SELECT starts_with(rolpassword, 'SCRAM-SHA-256') FROM pg_authid "
        "WHERE rolname = 'emailservice'\""
    )
    assert stored.stdout.strip() == "t"


def test_the_app_host_may_reach_exactly_the_data_hosts_mail_servers(split):
    """The app host's service reaches the deployment's Dovecot and Postfix at the data host's
    private address: those IMAP and submission pairs are allowed, nothing else of it."""
    line = split.app.run(
        "grep '^ALLOWED_PRIVATE_HOSTS=' /etc/emailservice/emailservice.env"
    ).stdout.strip()
    address = split.data_private
    assert line == "ALLOWED_PRIVATE_HOSTS=" + ",".join(
        f"{address}:{port}" for port in (143, 993, 587, 465)
    )
