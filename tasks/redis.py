"""Redis (Debian's): loopback, a password, AOF so queued jobs survive restarts, noeviction."""

from __future__ import annotations

from pyinfra.operations import systemd

from tasks.common import changed, template
from tasks.secrets import secret_file


def configure(password: str) -> list:
    conf = template("redis/redis.conf.j2", "/etc/redis/redis.conf", group="redis", mode="640")
    auth = secret_file(
        name="Redis password",
        path="/etc/redis/emailservice-auth.conf",
        content=f"requirepass {password}\n",
        user="root",
        group="redis",
        mode="640",
    )
    service = systemd.service(
        name="Redis running",
        service="redis-server",
        running=True,
        enabled=True,
        restarted=changed(conf, auth),
    )
    return [conf, auth, service]
