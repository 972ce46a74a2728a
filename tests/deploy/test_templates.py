"""Levels 1 and 2 of the deploy's proof (docs/deploy.md): templates rendered with each
environment's data, and the whole deploy planned without a target, printing no secret."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tasks import debian
from tasks import dovecot as dovecot_task
from tasks import postfix as postfix_task
from tests.deploy.inventory import group_data

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ["vagrant", "staging", "production"]
UNITS = ["api@", "worker@", "scheduler", "idle", "migrate"]


def render(template: str, env: str, **extra) -> str:
    jinja = Environment(
        loader=FileSystemLoader(str(ROOT / "templates")),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    host = SimpleNamespace(data=SimpleNamespace(**group_data(env)))
    return jinja.get_template(template).render(host=host, **extra)


def settings(text: str, sep: str = "=") -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and sep in line:
            key, _, value = line.partition(sep)
            found[key.strip()] = value.strip()
    return found


def api_ports(env: str) -> list[int]:
    data = group_data(env)
    return [data["api_base_port"] + i for i in range(data["api_instances"])]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_redis_keeps_queued_jobs_and_stays_local(env):
    conf = render("redis/redis.conf.j2", env, bind=["127.0.0.1", "-::1"])
    lines = {
        line.split(None, 1)[0]: line.split(None, 1)[1]
        for line in conf.splitlines()
        if line.strip() and not line.startswith("#") and " " in line
    }
    assert lines["appendonly"] == "yes"
    assert lines["appendfsync"] == "everysec"
    assert lines["maxmemory"] == "256mb"
    assert lines["maxmemory-policy"] == "noeviction"
    assert lines["bind"] == "127.0.0.1 -::1"
    assert lines["protected-mode"] == "yes"
    assert lines["include"] == "/etc/redis/emailservice-auth.conf"
    assert "requirepass" not in lines  # the password lives in the hidden file only


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_postgres_is_local_with_no_trust(env):
    conf = render("postgresql/emailservice.conf.j2", env, listen_addresses=["localhost"])
    assert settings(conf)["listen_addresses"] == "'localhost'"
    rules = hba_rules(render("postgresql/pg_hba.conf.j2", env, app_addresses=[]))
    assert all("trust" not in rule for rule in rules)
    assert ["local", "emailservice", "emailservice", "peer"] in rules
    assert all(rule[0] == "local" or rule[3] in ("127.0.0.1/32", "::1/128") for rule in rules)


def hba_rules(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_split_roles_open_postgres_and_redis_to_the_app_hosts_only():
    """A db host (production example): the private address, scram-sha-256 for the app's role
    from each app host, and nftables letting those addresses (only) reach 5432 and 6379."""
    apps = ["10.0.0.11", "10.0.0.12"]
    conf = render(
        "postgresql/emailservice.conf.j2", "production", listen_addresses=["localhost", "10.0.0.21"]
    )
    assert settings(conf)["listen_addresses"] == "'localhost,10.0.0.21'"
    remote = [
        rule
        for rule in hba_rules(render("postgresql/pg_hba.conf.j2", "production", app_addresses=apps))
        if rule[0] == "host" and rule[3] not in ("127.0.0.1/32", "::1/128")
    ]
    assert remote == [
        ["host", "emailservice", "emailservice", f"{a}/32", "scram-sha-256"] for a in apps
    ]
    redis = render("redis/redis.conf.j2", "production", bind=["127.0.0.1", "-::1", "10.0.0.21"])
    assert "\nbind 127.0.0.1 -::1 10.0.0.21\n" in redis
    rules = render(
        "nftables/nftables.conf.j2",
        "production",
        tcp_ports=[22],
        db_clients=apps,
        db_ports=[5432, 6379],
    )
    assert "ip saddr { 10.0.0.11, 10.0.0.12 } tcp dport { 5432, 6379 } accept" in rules
    [public] = re.findall(r"^\s*tcp dport \{ ([\d, ]+) \} accept", rules, re.M)
    assert public == "22"


def postfix_render(template: str, env: str) -> str:
    """A Postfix template as the deploy renders it for `env` (tasks/postfix.py's variables)."""
    return render(template, env, **postfix_task.variables(SimpleNamespace(**group_data(env))))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_postfix_refuses_relay_and_forged_senders(env):
    main = settings(postfix_render("postfix/main.cf.j2", env))
    data = group_data(env)
    assert main["virtual_mailbox_domains"] == data["mail_domain"]
    assert data["mail_domain"] not in main["mydestination"]
    assert main["virtual_transport"] == "lmtp:unix:private/dovecot-lmtp"
    assert main["smtpd_tls_auth_only"] == "yes"
    assert main["smtpd_sasl_type"] == "dovecot"
    assert main["smtpd_relay_restrictions"].endswith("reject_unauth_destination")
    assert (
        "check_sender_access texthash:/etc/postfix/local_senders"
        in main["smtpd_sender_restrictions"]
    )
    assert (
        postfix_render("postfix/local_senders.j2", env)
        .splitlines()[-1]
        .startswith(f"{data['mail_domain']} REJECT")
    )
    assert main["smtpd_tls_cert_file"] == data["tls_cert_path"]
    master = postfix_render("postfix/master.cf.j2", env)
    submission = master.split("\nsubmission ")[1].split("\nsubmissions ")[0]
    assert "smtpd_tls_security_level=encrypt" in submission
    assert "smtpd_sasl_auth_enable=yes" in submission
    assert "reject_sender_login_mismatch" in submission
    submissions = master.split("\nsubmissions ")[1].split("\npickup ")[0]
    assert "smtpd_tls_wrappermode=yes" in submissions


@pytest.mark.parametrize("env", ["vagrant"])
def test_postfix_maps_list_the_inventorys_mailboxes(env):
    mailboxes = postfix_render("postfix/virtual_mailboxes.j2", env)
    logins = postfix_render("postfix/sender_logins.j2", env)
    for address in group_data(env)["mail_users"]:
        assert f"{address} OK" in mailboxes
        assert f"{address} {address}" in logins


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("release", [debian.TRIXIE, debian.BOOKWORM], ids=lambda r: r.codename)
def test_dovecot_requires_tls_and_serves_postfix(env, release):
    data = SimpleNamespace(**group_data(env))
    conf = render(dovecot_task.TEMPLATE, env, **dovecot_task.variables(data, release.dovecot))
    cert, key = group_data(env)["tls_cert_path"], group_data(env)["tls_key_path"]
    assert re.search(r"^ssl = required$", conf, re.M)
    assert "unix_listener /var/spool/postfix/private/dovecot-lmtp" in conf
    assert "unix_listener /var/spool/postfix/private/auth" in conf
    assert re.search(r"inet_listener imaps \{\s*port = 993\s*ssl = yes", conf)
    settings_lines = [
        line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")
    ]
    if release.dovecot == "2.4":
        # 2.4 refuses to start unless its version settings come first.
        assert settings_lines[:2] == [
            "dovecot_config_version = 2.4.0",
            "dovecot_storage_version = 2.4.0",
        ]
        assert re.search(r"^auth_allow_cleartext = no$", conf, re.M)
        assert f"ssl_server_cert_file = {cert}\n" in conf
        assert f"ssl_server_key_file = {key}\n" in conf
        assert re.search(
            r"passdb passwd-file \{\s*passwd_file_path = /etc/dovecot/users\s*"
            r"default_password_scheme = ARGON2ID\s*\}",
            conf,
        )
        assert "home = /var/vmail/%{user | domain}/%{user | username}" in conf
        # No 2.3 setting is left (2.4 refuses every one of them).
        for old in ("disable_plaintext_auth", "ssl_cert =", "mail_location", "args =", "%d", "%n"):
            assert old not in conf, old
    else:
        assert "dovecot_config_version" not in conf
        assert re.search(r"^disable_plaintext_auth = yes$", conf, re.M)
        assert f"ssl_cert = <{cert}\n" in conf
        assert "driver = passwd-file" in conf
        assert "args = scheme=ARGON2ID username_format=%u /etc/dovecot/users" in conf


@pytest.mark.parametrize("release", [debian.TRIXIE, debian.BOOKWORM], ids=lambda r: r.codename)
def test_nginx_http2_in_each_releases_syntax(release):
    conf = render(
        "nginx/emailservice.conf.j2",
        "vagrant",
        api_ports=api_ports("vagrant"),
        http2_directive=release.nginx_http2_directive,
    )
    listens = re.findall(r"^\s*listen (.*);$", conf, re.M)
    if release.nginx_http2_directive:
        assert re.search(r"^\s*http2 on;$", conf, re.M)
        assert not any("http2" in listen for listen in listens)
    else:
        assert "http2 on;" not in conf
        assert "443 ssl http2 default_server" in listens


def test_dovecot_hashes_are_argon2id_that_dovecot_verifies():
    """The passwd-file's hashes: argon2id, verified by the Dovecot the tests run (Debian 12's,
    as on a host), salted per user and realm, stable across deploys, and the salt says nothing
    of the password."""
    import base64
    import shutil

    from tasks.secrets import dovecot_hash

    doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"  # make test installs Dovecot
    password = secrets.token_urlsafe(18)
    hashed = dovecot_hash("test@example.test", password, "mail.example.test")
    assert hashed.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$")
    assert hashed == dovecot_hash("test@example.test", password, "mail.example.test")

    def verify(candidate: str) -> bool:
        run = subprocess.run(
            [doveadm, "pw", "-t", hashed], input=f"{candidate}\n", capture_output=True, text=True
        )
        return run.returncode == 0 and "(verified)" in run.stdout

    # doveadm reads the password from standard input: never on a command line.
    assert verify(password)
    assert not verify(password + "x")

    def salt(value: str) -> bytes:
        field = value.split("$")[4]
        return base64.b64decode(field + "=" * (-len(field) % 4))

    assert len(salt(hashed)) == 16
    # Per user and per host; the same salt for another password (not derived from it).
    assert salt(hashed) != salt(dovecot_hash("other@example.test", password, "mail.example.test"))
    assert salt(hashed) != salt(dovecot_hash("test@example.test", password, "mail.example.org"))
    assert salt(hashed) == salt(dovecot_hash("test@example.test", "another", "mail.example.test"))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_nginx_terminates_tls_in_front_of_local_api_ports(env):
    ports = api_ports(env)
    conf = render("nginx/emailservice.conf.j2", env, api_ports=ports, http2_directive=True)
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", conf) == [str(p) for p in ports]
    assert "listen 443 ssl" in conf
    assert "return 301 https://" in conf
    assert "proxy_next_upstream error timeout http_502 http_503" in conf
    # /metrics (per instance, and the pool) only for metrics_allow.
    for port in ports:
        block = conf.split(f"location = /metrics/{port} {{")[1].split("}")[0]
        assert f"proxy_pass http://127.0.0.1:{port}/metrics;" in block
        assert block.strip().splitlines()[-2].strip() == "deny all;"
    pool = conf.split("location = /metrics {")[1].split("}")[0]
    assert "deny all;" in pool and "allow 127.0.0.1;" in pool


def location(conf: str, name: str) -> str:
    return conf.split(f"location {name} {{")[1].split("\n    }")[0]


def headers_of(block: str) -> dict[str, str]:
    found = {}
    for name, value in re.findall(r"^\s*add_header (\S+) (.+?) always;$", block, re.M):
        found[name] = value.strip('"')
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_nginx_sends_security_headers_and_limits_logins(env):
    conf = render("nginx/emailservice.conf.j2", env, api_ports=api_ports(env), http2_directive=True)
    data = group_data(env)
    https = conf.split("listen 443 ssl")[1]
    server_level = https.split("location ")[0]
    expected = {
        "Strict-Transport-Security": "max-age=31536000",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    api_csp = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    assert headers_of(server_level) == {**expected, "Content-Security-Policy": api_csp}
    # Once each: the API's own nosniff is hidden behind nginx's.
    assert "proxy_hide_header X-Content-Type-Options;" in server_level
    # A location with add_header of its own drops the server's: each repeats them all.
    docs = headers_of(location(conf, "/docs"))
    assert {k: v for k, v in docs.items() if k != "Content-Security-Policy"} == expected
    assert "script-src 'self'" in docs["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in docs["Content-Security-Policy"]
    limited = location(conf, "@rate_limited")
    assert headers_of(limited) == {
        **expected,
        "Content-Security-Policy": api_csp,
        "Retry-After": "60",
    }
    assert '"code": "rate_limited"' in limited and "return 429" in limited
    for name in ("/", "= /auth/login", "= /metrics"):
        assert "add_header" not in location(conf, name), name
    # Logins: limit_req per client address, in front of the API's own limits.
    rate = data["nginx_login_rate_per_minute"]
    assert f"limit_req_zone $binary_remote_addr zone=emailservice_login:10m rate={rate}r/m;" in conf
    login = location(conf, "= /auth/login")
    burst = data["nginx_login_burst"]
    assert f"limit_req zone=emailservice_login burst={burst} nodelay;" in login
    assert "limit_req_status 429;" in login and "error_page 429 = @rate_limited;" in login
    assert "limit_req" not in location(conf, "/")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_firewall_opens_only_the_public_ports(env):
    data = group_data(env)
    every_role = {
        data["ssh_port"],
        *(p for ports in data["role_tcp_ports"].values() for p in ports),
    }
    rules = render(
        "nftables/nftables.conf.j2", env, tcp_ports=sorted(every_role), db_clients=[], db_ports=[]
    )
    assert "ip saddr" not in rules
    [ports] = re.findall(r"tcp dport \{ ([\d, ]+) \} accept", rules)
    assert {int(p) for p in ports.split(",")} == {22, 25, 80, 443, 465, 587, 143, 993}
    assert "policy drop" in rules
    for private in [5432, 6379, *api_ports(env)]:
        assert str(private) not in ports.split(", ")


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened_and_run_as_the_service_user(env, unit):
    text = render(f"systemd/emailservice-{unit}.service.j2", env)
    conf = settings(text)
    assert conf["User"] == "emailservice"
    assert conf["EnvironmentFile"] == "/etc/emailservice/emailservice.env"
    for setting, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert conf[setting] == value, setting
    assert conf["ReadWritePaths"] == "/var/lib/emailservice"
    assert conf["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert conf["SystemCallFilter"] == "@system-service"
    assert conf["SystemCallArchitectures"] == "native"
    assert conf["SystemCallErrorNumber"] == "EPERM"
    for setting in ("RestrictNamespaces", "RestrictRealtime", "ProtectKernelLogs", "ProtectClock"):
        assert conf[setting] == "yes", setting
    limits = group_data(env)["unit_limits"][unit.rstrip("@")]
    assert conf["MemoryMax"] == limits["memory_max"]
    assert conf["TasksMax"] == str(limits["tasks_max"])
    assert conf["LimitNOFILE"] == str(limits["nofile"])
    if unit != "migrate":
        assert conf["Restart"] == "on-failure"
        assert "redis-server.service" in conf["After"]
    if unit == "api@":
        assert "--host 127.0.0.1 --port %i" in conf["ExecStart"]
    if unit == "worker@":
        assert conf["KillMode"] == "mixed"
        assert int(conf["TimeoutStopSec"]) > longest_job_timeout()


def longest_job_timeout() -> int:
    """The longest job timeout of the job catalogue (sync and send: 900 s), so a longer job
    makes this test ask for a longer TimeoutStopSec."""
    from app.jobs import CATALOGUE

    return max(spec.timeout for spec in CATALOGUE)


def test_the_environment_file_holds_every_required_setting():
    sys.path.insert(0, str(ROOT))
    from app.config import Settings
    from tasks import app as app_task

    data = group_data("vagrant")
    fake = {
        "REDIS_PASSWORD": "r" * 20,
        "JWT_SECRET": "j" * 40,
        "ENCRYPTION_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    }
    values = settings(app_task.env_file(SimpleNamespace(**data), fake))
    assert values.pop("MAIL_TLS_CA_FILE") == data["tls_cert_path"]  # a file on the host
    parsed = Settings.from_mapping(values)
    from sqlalchemy.engine import make_url

    url = make_url(parsed.database_url)
    assert (url.username, url.database, url.query["host"]) == (
        "emailservice",
        "emailservice",
        "/var/run/postgresql",
    )
    assert parsed.trusted_proxies == 1
    # Exactly this host's IMAP and submission ports on loopback: accounts on its own mail
    # servers work, and nothing else on loopback (PostgreSQL, Redis, the API) is allowed.
    assert parsed.allowed_private_hosts == (
        "127.0.0.1:143",
        "127.0.0.1:993",
        "127.0.0.1:587",
        "127.0.0.1:465",
    )
    # Split roles: the mail hosts at their private addresses.
    split = settings(
        app_task.env_file(SimpleNamespace(**data), fake, None, ["10.0.0.21", "fd00::21"])
    )
    assert split["ALLOWED_PRIVATE_HOSTS"] == (
        "10.0.0.21:143,10.0.0.21:993,10.0.0.21:587,10.0.0.21:465,"
        "[fd00::21]:143,[fd00::21]:993,[fd00::21]:587,[fd00::21]:465"
    )


def _plan(env: str, release: str, *groups: str, environ: dict[str, str], cwd: Path) -> str:
    """The whole deploy planned by tests/deploy/plan.py (a host in `groups`; none: every role),
    with `environ` added to the environment; its output (stdout and stderr), checked to succeed."""
    plan = ROOT / "tests" / "deploy" / "plan.py"
    result = subprocess.run(
        [sys.executable, str(plan), env, release, ",".join(groups)],
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("release", ["trixie", "bookworm"])
def test_the_whole_deploy_plans_without_a_target_and_prints_no_secret(env, release, tmp_path):
    secret_values = {
        "JWT_SECRET": secrets.token_urlsafe(40),
        "ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "MAILBOX_TEST_PASSWORD": secrets.token_urlsafe(18),
    }
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    secrets_file = ROOT / "inventories" / "secrets" / f"{env}.env"
    existed = secrets_file.exists()
    output = _plan(env, release, environ=environ, cwd=tmp_path)
    for expected in [
        "nginx, python3-venv, postgresql, redis-server, postfix, dovecot-imapd, dovecot-lmtpd",
        "Render /etc/postfix/main.cf",
        "Redis password",
        "Service settings and secrets",
        "emailservice-api@8001.service running",
        "emailservice-scheduler.service running",
        "Firewall active",
        "/health answers 200 through nginx",
        # The release's own PostgreSQL cluster (17 on Debian 13, 15 on 12).
        f"Render /etc/postgresql/{17 if release == 'trixie' else 15}/main/pg_hba.conf",
    ]:
        assert expected in output, expected
    for name, value in secret_values.items():
        assert value not in output, f"{name} printed by the plan"
    # Every secret came from the environment: no secrets file was generated.
    assert secrets_file.exists() == existed


@pytest.mark.parametrize("release", ["trixie", "bookworm"])
def test_a_mail_host_without_nginx_plans_its_acme_certificate(release, tmp_path):
    """The production example's data/mail host alone (the `mail` group only, tls_mode acme):
    the deploy plans certbot's issuance there without nginx, API or database."""
    environ = {
        "EMAILSERVICE_JWT_SECRET": secrets.token_urlsafe(40),
        "EMAILSERVICE_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "EMAILSERVICE_REDIS_PASSWORD": secrets.token_urlsafe(24),
    }
    output = _plan("production", release, "mail", environ=environ, cwd=tmp_path)
    for expected in [
        "Render /etc/postfix/main.cf",
        "Dovecot running",
        "Render /etc/emailservice/certbot-deploy-hook",
        "certbot.timer renews the certificate",
        "Obtain the certificate from https://acme-v02.api.letsencrypt.org/directory",
    ]:
        assert expected in output, expected
    for absent in [
        "nginx",
        "ACME challenge directory",
        "/health",
        "postgresql",
        "emailservice-api",
    ]:
        assert absent not in output, absent
    # The firewall comes first: the CA's check must pass it on port 80.
    assert output.index("Firewall active") < output.index("Obtain the certificate")
