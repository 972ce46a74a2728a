"""The service itself: user, release virtualenv, secrets file, migrations, systemd units.

Layout on the host:
  /opt/emailservice/releases/<hash>/{wheels,venv}   one per release, installed from its wheels
  /opt/emailservice/current -> releases/<hash>      what the units run
  /etc/emailservice/emailservice.env                secrets and settings (root:emailservice 0640)
  /var/lib/emailservice                             the service user's state
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.facts.systemd import SystemdEnabled
from pyinfra.operations import files, server, systemd

from tasks import roles
from tasks.common import changed, template
from tasks.release import Release
from tasks.secrets import secret_file

UNITS = [
    "emailservice-api@.service",
    "emailservice-worker@.service",
    "emailservice-scheduler.service",
    "emailservice-idle.service",
    "emailservice-migrate.service",
    "emailservice-healthcheck.service",
    "emailservice-healthcheck.timer",
]


def api_ports() -> list[int]:
    return [host.data.api_base_port + i for i in range(host.data.api_instances)]


# The ports of the mail servers a tenant's account may use on a host with the mail role:
# Dovecot's IMAP (143 STARTTLS, 993 TLS: tasks/dovecot.py) and Postfix's submission (587
# STARTTLS, 465 TLS: templates/postfix/master.cf.j2). Never 25 (relay), nor any other port.
MAIL_CLIENT_PORTS = (143, 993, 587, 465)


def mail_server_pairs(mail_addresses: list[str]) -> str:
    """ALLOWED_PRIVATE_HOSTS: exactly the IMAP and submission HOST:PORT pairs of the mail
    servers at `mail_addresses`. The service refuses loopback and private addresses unless
    listed, so accounts on the deployment's own mail servers need these, and nothing else
    (not PostgreSQL, Redis or the API's ports on the same addresses) is reachable."""
    return ",".join(
        f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        for address in mail_addresses
        for port in MAIL_CLIENT_PORTS
    )


def deployment_mail_addresses() -> list[str]:
    """Where this host's service reaches the deployment's mail servers: itself on loopback
    (with the mail role), the others at their private addresses."""
    return [
        "127.0.0.1" if mail.name == host.name else roles.private_address(mail)
        for mail in roles.hosts_with("mail")
    ]


def env_file(
    data,
    secrets: dict[str, str],
    db_address: str | None = None,
    mail_addresses: list[str] | None = None,
) -> str:
    """The service's settings (.env format) from host data; see .env.example for each one.
    `db_address`: PostgreSQL and Redis on another host (split roles); None: on this one.
    `mail_addresses`: the deployment's mail servers; None: this host (every role)."""
    if db_address is None:
        # The Unix socket, peer authentication: no database password at all.
        database = (
            f"postgresql://{data.app_user}@/{data.postgres_database}?host=/var/run/postgresql"
        )
    else:
        database = (
            f"postgresql://{data.app_user}:{secrets['DATABASE_PASSWORD']}@{db_address}:5432/"
            f"{data.postgres_database}"
        )
    values = {
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://:{secrets['REDIS_PASSWORD']}@{db_address or '127.0.0.1'}:6379/0",
        "JWT_SECRET": secrets["JWT_SECRET"],
        "ENCRYPTION_KEY": secrets["ENCRYPTION_KEY"],
        "API_HOST": "127.0.0.1",
        "WAITRESS_THREADS": str(data.waitress_threads),
        "LOG_LEVEL": data.log_level,
        "SYNC_INTERVAL_SECONDS": str(data.sync_interval_seconds),
        # nginx in front: per-address login limits see the client, not nginx.
        "TRUSTED_PROXIES": "1",
        # Accounts on this host's own IMAP/SMTP verify against its (maybe self-signed) cert.
        "MAIL_TLS_CA_FILE": data.tls_cert_path,
        # ...and may reach them although they are on loopback or the private network.
        "ALLOWED_PRIVATE_HOSTS": mail_server_pairs(
            ["127.0.0.1"] if mail_addresses is None else mail_addresses
        ),
    }
    return "".join(f"{key}={value}\n" for key, value in values.items())


def install(release: Release, secrets: dict[str, str]) -> list:
    data = host.data
    ops = [
        server.group(name="Service group", group=data.app_user, system=True),
        server.user(
            name="Service user (no login, no sudo)",
            user=data.app_user,
            group=data.app_user,
            system=True,
            home=data.state_dir,
            shell="/usr/sbin/nologin",
            create_home=False,
        ),
        files.directory(
            name="State directory",
            path=data.state_dir,
            user=data.app_user,
            group=data.app_user,
            mode="750",
        ),
        files.directory(
            name="Config directory",
            path=data.config_dir,
            user="root",
            group=data.app_user,
            mode="750",
        ),
        files.directory(name="Releases directory", path=f"{data.app_root}/releases", mode="755"),
    ]

    root = f"{data.app_root}/releases/{release.name}"
    # A release is installed once; after that its venv exists and this step reports nothing.
    if host.get_fact(File, path=f"{root}/venv/bin/emailservice") is None:
        ops.append(
            files.sync(
                name=f"Upload release {release.name}",
                src=str(release.wheelhouse),
                dest=f"{root}/wheels",
                mode="644",
                dir_mode="755",
                delete=True,
            )
        )
        ops.append(
            server.shell(
                name=f"Install release {release.name} (offline, hash-checked)",
                commands=[
                    f"rm -rf {root}/venv",
                    f"python3 -m venv {root}/venv",
                    f"{root}/venv/bin/pip install --quiet --no-index --find-links {root}/wheels "
                    f"--require-hashes -r {root}/wheels/requirements-build.lock",
                    f"{root}/venv/bin/pip install --quiet --no-index --find-links {root}/wheels "
                    f"--require-hashes --no-build-isolation -r {root}/wheels/requirements.lock",
                    f"{root}/venv/bin/pip install --quiet --no-index --no-deps {root}/wheels/"
                    "emailservice-*.whl",
                    f"{root}/venv/bin/emailservice --help > /dev/null",
                ],
            )
        )

    remote_db = None if roles.has("db") else roles.db_address()
    settings = secret_file(
        name="Service settings and secrets",
        path=f"{data.config_dir}/emailservice.env",
        content=env_file(data, secrets, remote_db, deployment_mail_addresses()),
        user="root",
        group=data.app_user,
        mode="640",
    )
    units = [template(f"systemd/{unit}.j2", f"/etc/systemd/system/{unit}") for unit in UNITS]
    cli = template("emailservice/emailservice-cli.j2", "/usr/local/bin/emailservice", mode="755")
    healthcheck = template(
        "systemd/healthcheck.j2",
        "/usr/local/lib/emailservice/healthcheck",
        mode="755",
        api_ports=api_ports(),
    )
    ops += [settings, *units, cli, healthcheck]
    if changed(*units):
        ops.append(systemd.daemon_reload(name="Reload systemd units"))
    current = files.link(name="Switch to the release", path=f"{data.app_root}/current", target=root)
    ops.append(current)

    # Migrations run once per release, before anything of the new release starts, from one
    # host only (two hosts migrating at once would race).
    if (changed(current) or changed(settings)) and roles.first(*roles.APP):
        ops.append(
            server.shell(name="Apply migrations", commands=["systemctl start emailservice-migrate"])
        )
    ops += _services(restart=changed(current, settings, *units))
    ops.append(
        systemd.service(
            name="Health-check timer",
            service="emailservice-healthcheck.timer",
            running=roles.has("api"),
            enabled=roles.has("api"),
            restarted=roles.has("api") and changed(healthcheck),
        )
    )
    return ops


def _services(restart: bool) -> list:
    """The units of this host's roles; the scheduler and the IDLE watcher on one host only."""
    data = host.data
    ports = api_ports() if roles.has("api") else []
    apis = [f"emailservice-api@{port}.service" for port in ports]
    others = []
    if roles.has("workers"):
        others += [f"emailservice-worker@{n}.service" for n in range(1, data.worker_count + 1)]
    singletons = ["emailservice-scheduler.service", "emailservice-idle.service"]
    if roles.first("workers"):
        others += singletons
    wanted = apis + others
    ops = _rolling_restart(ports) if restart else []
    ops += [
        systemd.service(name=f"{unit} running", service=unit, running=True, enabled=True)
        for unit in apis
    ]
    # Workers one at a time too: `systemctl restart` waits for a stopping worker's current job
    # (KillMode=mixed, TimeoutStopSec above the longest job), while the others keep working.
    ops += [
        systemd.service(
            name=f"{unit} running", service=unit, running=True, enabled=True, restarted=restart
        )
        for unit in others
    ]
    # Instances beyond the inventory's counts (or of a role the host no longer has) are
    # stopped and disabled.
    enabled = host.get_fact(SystemdEnabled) or {}
    for unit, is_enabled in enabled.items():
        if is_enabled and unit.startswith(
            ("emailservice-api@", "emailservice-worker@", *singletons)
        ):
            if unit not in wanted:
                ops.append(
                    systemd.service(
                        name=f"Retire {unit}", service=unit, running=False, enabled=False
                    )
                )
    return ops


def _rolling_restart(ports: list[int]) -> list:
    """Restart the API instances one at a time behind nginx: the next one only once this one
    answers /health and nginx has had time to forget the failures it saw while it was down
    (fail_timeout), so at any moment one instance serves and no request fails."""
    wait = host.data.api_fail_timeout_seconds
    ops = []
    for i, port in enumerate(ports):
        unit = f"emailservice-api@{port}.service"
        settle = f"sleep {wait}" if i < len(ports) - 1 else "true"
        ops.append(
            server.shell(
                name=f"Restart {unit} (rolling: waits for its /health)",
                commands=[
                    f"systemctl restart {unit}",
                    "for i in $(seq 120); do "
                    f"curl -fsS -m 2 -o /dev/null http://127.0.0.1:{port}/health && exit 0; "
                    "sleep 0.5; done; "
                    f"echo '{unit} did not answer /health within 60 s' >&2; "
                    f"journalctl -u {unit} -n 30 --no-pager >&2; exit 1",
                    settle,
                ],
            )
        )
    return ops
