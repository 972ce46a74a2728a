"""nftables: only the public services' ports are open."""

from __future__ import annotations

from pyinfra.operations import server, systemd

from tasks.common import changed, template


def configure() -> list:
    rules = template("nftables/nftables.conf.j2", "/etc/nftables.conf", mode="755")
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
