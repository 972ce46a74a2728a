"""Redis (Debian's): a password, AOF so queued jobs survive restarts, noeviction. Loopback only,
and with split roles also the private address (only app hosts get through the firewall)."""

from __future__ import annotations

from pyinfra.operations import systemd

from tasks import roles
from tasks.common import changed, template
from tasks.secrets import secret_file


def configure(password: str, private: bool = False) -> list:
    """`private`: app hosts connect over the network (roles.split())."""
    bind = ["127.0.0.1", "-::1"] + ([roles.private_address()] if private else [])
    conf = template(
        "redis/redis.conf.j2", "/etc/redis/redis.conf", group="redis", mode="640", bind=bind
    )
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
