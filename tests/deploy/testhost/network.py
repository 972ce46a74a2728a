"""The test host's network: a namespace of its own, a veth pair, and a /30 address slot.

`ip netns add es-<name>`, a veth pair whose host side is `es-<name>` (gateway 10.231.x.y+1/30)
and whose other side is created directly inside the namespace as `eth0` (address
10.231.x.y+2/30), configured with `ip -n` before boot; lo is brought up too. No systemd-networkd
in the image: the address is static and known before boot, and nothing inside the host depends
on a network manager. There is no default route and this machine does not forward: the host can
reach only its gateway, so a test's traffic cannot leave this machine. The /30 is the first free
slot of 10.231.0.0/16 starting at a hash of the name, checked against every address and route
on the machine under a lock (/run/emailservice-testhost/net.lock), so concurrent runs get
different slots. The namespace gives the host its own 127.0.0.1: the machine's PostgreSQL
(5432) and Redis (6379) are not visible inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.deploy.testhost.machine import STATE_DIR, TestHostError, flock, run, say

if TYPE_CHECKING:
    from tests.deploy.testhost.boot import TestHost

NETWORK = ipaddress.ip_network("10.231.0.0/16")
_LOCK = STATE_DIR / "net.lock"


def netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _netns_pids(netns: str) -> list[int]:
    if not netns_exists(netns):
        return []
    result = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill_netns(netns: str, timeout: float = 10) -> None:
    """SIGKILL every process left in the namespace (a container whose nspawn is gone)."""
    deadline = time.monotonic() + timeout
    while pids := _netns_pids(netns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestHostError(f"processes in {netns} do not die: {pids}")
        time.sleep(0.1)


def remove_network(netns: str, veth: str) -> None:
    """Remove the host's namespace and veth (and nspawn's per-machine dir, which an nspawn that
    was killed leaves behind; both are named es-<name>)."""
    _kill_netns(netns)
    if link_exists(veth):
        run(["ip", "link", "del", "dev", veth], check=False)
    if netns_exists(netns):
        run(["ip", "netns", "del", netns])
    with contextlib.suppress(OSError):  # only if empty
        Path("/run/systemd/nspawn/propagate", netns).rmdir()


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst, strict=False))
    return used


def free_slot(name: str) -> ipaddress.IPv4Network:
    """The first /30 of NETWORK free on this machine, starting at a hash of the name."""
    slots = NETWORK.num_addresses // 4 - 1  # slot 0 (10.231.0.0/30) is never used
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % slots
    used = _networks_in_use()
    for i in range(slots):
        index = (start + i) % slots + 1
        subnet = ipaddress.ip_network(f"{NETWORK.network_address + 4 * index}/30")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise TestHostError(f"no free /30 left in {NETWORK}")


def attach(name: str, netns: str, veth: str) -> tuple[str, str]:
    """Make the namespace and its veth pair, on a free slot: (gateway, address) of the host."""
    with flock(_LOCK, "choosing a test host address"):
        subnet = free_slot(name)
        gateway = str(subnet.network_address + 1)
        address = str(subnet.network_address + 2)
        run(["ip", "netns", "add", netns])
        # The host's side is made inside the namespace directly, as eth0.
        run(["ip", "link", "add", veth, "type", "veth"] + ["peer", "name", "eth0", "netns", netns])
        run(["ip", "addr", "add", f"{gateway}/30", "dev", veth])
    run(["ip", "link", "set", veth, "up"])
    inside = ["ip", "-n", netns]
    run([*inside, "addr", "add", f"{address}/30", "dev", "eth0"])
    run([*inside, "link", "set", "eth0", "up"])
    run([*inside, "link", "set", "lo", "up"])
    return gateway, address


@contextlib.contextmanager
def private_link(a: TestHost, b: TestHost) -> Iterator[tuple[str, str]]:
    """A private network between two booted hosts, like a provider's private LAN; yields the
    private addresses of a and b.

    A veth pair joins their namespaces directly (eth1 on each, a /30 of its own, chosen like a
    host's slot under the same lock). This machine is not on it, but has a route to b's private
    address through b: it reaches b there as any outsider on that network would, which is how a
    test shows that b's firewall lets in a and nobody else. The route (which also marks the /30
    as taken for other runs) is removed on exit, after both hosts are told to power off at once:
    the link goes with the first namespace removed, and a host that loses it while still up was
    seen hanging in its power-off for more than 30 s.
    """
    with flock(_LOCK, "choosing a private network"):
        subnet = free_slot(f"{a.name}+{b.name}")
        first, second = str(subnet.network_address + 1), str(subnet.network_address + 2)
        run(
            ["ip", "-n", a.netns, "link", "add", "eth1", "type", "veth"]
            + ["peer", "name", "eth1", "netns", b.netns]
        )
        run(["ip", "route", "add", f"{second}/32", "via", b.address])
    try:
        for netns, address in ((a.netns, first), (b.netns, second)):
            run(["ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "eth1"])
            run(["ip", "-n", netns, "link", "set", "eth1", "up"])
        say(f"private link {a.machine} {first} <-> {b.machine} {second}")
        yield first, second
    finally:
        for host in (a, b):
            host.power_off()  # stop() then waits for each
        run(["ip", "route", "del", f"{second}/32"], check=False)
