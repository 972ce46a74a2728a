"""PostgreSQL (Debian's): the app's role and database. On one host: local only, peer
authentication over the Unix socket (no password at all). With split roles: also listening on
the private address, where only the app hosts may log in, with scram-sha-256."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import postgres, server, systemd

from tasks import debian, roles
from tasks.common import changed, template
from tasks.secrets import scram_sha256, secret_file


def conf_dir() -> str:
    """The main cluster's configuration directory (PostgreSQL 17 on Debian 13, 15 on 12)."""
    return f"/etc/postgresql/{debian.release().postgresql}/main"


def configure(password: str | None = None) -> list:
    """`password`: the app role's, when app hosts connect over the network (roles.split())."""
    data = host.data
    version = debian.release().postgresql
    clients = roles.remote_app_addresses() if password else []
    listen = ["localhost", roles.private_address()] if clients else ["localhost"]
    conf = template(
        "postgresql/emailservice.conf.j2",
        f"{conf_dir()}/conf.d/emailservice.conf",
        listen_addresses=listen,
    )
    hba = template(
        "postgresql/pg_hba.conf.j2",
        f"{conf_dir()}/pg_hba.conf",
        user="postgres",
        group="postgres",
        mode="640",
        app_addresses=clients,
    )
    cluster = systemd.service(
        name="PostgreSQL running",
        service=f"postgresql@{version}-main",
        running=True,
        enabled=True,
        restarted=changed(conf, hba),
    )
    umbrella = systemd.service(
        name="PostgreSQL enabled at boot", service="postgresql", running=True, enabled=True
    )
    # No password here: postgres.role(password=...) reports a change on every run (below).
    as_postgres = {"_sudo": True, "_sudo_user": "postgres", "_use_sudo_login": True}
    role = postgres.role(
        name="The app's role (not a superuser)",
        role=data.app_user,
        login=True,
        superuser=False,
        **as_postgres,
    )
    database = postgres.database(
        name="The app's database",
        database=data.postgres_database,
        owner=data.app_user,
        encoding="UTF8",
        **as_postgres,
    )
    ops = [conf, hba, cluster, umbrella, role, database]
    if password:
        ops += _role_password(password)
    return ops


def _role_password(password: str) -> list:
    """The app role's password, as a SCRAM verifier (stable for a given password): written to
    a hidden file, applied only when it changed, never on a command line or in the output."""
    data = host.data
    path = f"{conf_dir()}/emailservice-role.sql"
    verifier = scram_sha256(data.app_user, password)
    statement = secret_file(
        name="The app role's password (SCRAM verifier)",
        path=path,
        content=f"ALTER ROLE \"{data.app_user}\" PASSWORD '{verifier}';\n",
        user="postgres",
        group="postgres",
        mode="600",
    )
    ops = [statement]
    if changed(statement):
        ops.append(
            server.shell(
                name="Set the app role's password",
                commands=[f"psql -X -q -v ON_ERROR_STOP=1 -f {path}"],
                _sudo=True,
                _sudo_user="postgres",
                _use_sudo_login=True,
            )
        )
    return ops
