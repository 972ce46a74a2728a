"""nftables: only the public ports of the host's roles are open; with split roles, PostgreSQL and
Redis on a db host are open to the app hosts' private addresses and nobody else."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import server, systemd

from tasks import roles
from tasks.common import changed, template


def public_ports() -> list[int]:
    ports = {host.data.ssh_port}
    for role in roles.of():
        ports.update(host.data.role_tcp_ports.get(role, []))
    if host.data.tls_mode == "acme" and roles.has("api", "mail"):
        # The CA's HTTP-01 check: nginx answers it, or certbot's own server on a mail host.
        ports.add(80)
    return sorted(ports)


def configure(db_clients: list[str]) -> list:
    """`db_clients`: addresses allowed to reach this host's PostgreSQL and Redis."""
    rules = template(
        "nftables/nftables.conf.j2",
        "/etc/nftables.conf",
        mode="755",
        tcp_ports=public_ports(),
        db_clients=db_clients,
        db_ports=sorted(roles.DB_PORTS.values()),
    )
    ops = [rules]
    if changed(rules):
        ops.append(
            server.shell(name="Firewall rules are valid", commands=["nft -c -f /etc/nftables.conf"])
        )
    ops.append(
        systemd.service(
            name="Firewall active",
            service="nftables",
            running=True,
            enabled=True,
            reloaded=changed(rules),
        )
    )
    return ops
