"""PostgreSQL (Debian's): local only, the app's role and database, peer authentication."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import postgres, systemd

from tasks.common import changed, template

# Debian 12 ships PostgreSQL 15.
VERSION = 15
CONF_DIR = f"/etc/postgresql/{VERSION}/main"


def configure() -> list:
    data = host.data
    conf = template("postgresql/emailservice.conf.j2", f"{CONF_DIR}/conf.d/emailservice.conf")
    hba = template(
        "postgresql/pg_hba.conf.j2",
        f"{CONF_DIR}/pg_hba.conf",
        user="postgres",
        group="postgres",
        mode="640",
    )
    cluster = systemd.service(
        name="PostgreSQL running",
        service=f"postgresql@{VERSION}-main",
        running=True,
        enabled=True,
        restarted=changed(conf, hba),
    )
    umbrella = systemd.service(
        name="PostgreSQL enabled at boot", service="postgresql", running=True, enabled=True
    )
    # No password: the app connects over the socket as its own system user (peer). That also
    # avoids postgres.role(password=...), which reports a change on every run.
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
    return [conf, hba, cluster, umbrella, role, database]
