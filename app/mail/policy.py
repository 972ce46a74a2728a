"""Which addresses the service may connect to for a tenant (the outbound host policy).

Tenants name the hosts the service connects to, from inside the operator's network. Without a
policy a tenant could point an account at the host's own Redis or PostgreSQL, the cloud
metadata service (169.254.169.254) or anything on a private network, and use the service as a
proxy or a port scanner. So before every connection the host is resolved once, every address
it resolves to is checked, and the connection goes to the checked address (TLS still verifies
the name the tenant gave): a name cannot resolve to something else between check and connect.

Refused unless an entry of ALLOWED_PRIVATE_HOSTS allows them: every address that is not a
public unicast address (REFUSED below), IPv4-mapped IPv6 forms included. Numeric spellings
such as `0x7f.1`, `2130706433` or `127.1` are no way around it: they are resolved like any name
and the address they resolve to is what is checked.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from app.config import HostEntry, parse_host_entry
from app.mail import Category, MailConnectionError, failure

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int, float], "list[Address]"]

# Everything a tenant's mail server can never legitimately be, with why.
REFUSED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("0.0.0.0/8", "this network (unspecified)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved, broadcast"),
        ("::/96", "unspecified, loopback, IPv4-compatible"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "local NAT64"),
        ("100::/64", "discard"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("fc00::/7", "unique local (ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

# What the policy refuses in settings, as opposed to what a server answered.
REFUSALS = (Category.ADDRESS_NOT_ALLOWED, Category.CLEAR_TEXT_NOT_ALLOWED)

# Resolutions run in a few threads of their own, so a slow resolver never holds the caller
# past its deadline; the pool bounds how many slow lookups can pile up.
RESOLVER_THREADS = 8
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def refused_range(address: Address) -> str | None:
    """Why `address` is refused without an allow entry (None: a public address)."""
    address = unmapped(address)
    for network, why in REFUSED:
        if address.version == network.version and address in network:
            return why
    return None


def unmapped(address: Address) -> Address:
    """The IPv4 address of an IPv4-mapped IPv6 address (::ffff:a.b.c.d), else `address`."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class HostPolicy:
    """Resolves a tenant's host once and says which address the connection may go to."""

    def __init__(self, entries: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        # Already validated when the settings were read; parsed here into their meaning.
        self.entries: tuple[HostEntry, ...] = tuple(parse_host_entry(e) for e in entries)
        self.resolve: Resolver = resolver or resolve  # another resolver: tests of the logic

    def check(self, host: str, port: int, deadline: float, *, clear_text: bool = False) -> str:
        """The address to connect to for `host`:`port`, or MailConnectionError with the
        category `address not allowed`, `name not resolved` or `timed out` (resolution
        included, nothing here outlives `deadline`, a time.monotonic() value).

        `clear_text` (security "none"): every address must be allowed by an entry, public
        ones too (else `clear text not allowed`), so a password is sent unencrypted only to a
        private server the operator named, never across the internet."""
        addresses = self.resolve(host, port, deadline)
        for address in addresses:
            why = refused_range(address)
            if why is None and not clear_text:
                continue
            if not self.listed(address, port, deadline):
                raise failure(
                    MailConnectionError,
                    Category.ADDRESS_NOT_ALLOWED if why else Category.CLEAR_TEXT_NOT_ALLOWED,
                    f"{host}:{port} resolves to {address} ({why or 'public, in clear text'}); "
                    "no entry of ALLOWED_PRIVATE_HOSTS allows it",
                )
        return str(unmapped(addresses[0]))

    def listed(self, address: Address, port: int, deadline: float) -> bool:
        """Whether an entry allows `address`:`port` (names in entries are resolved too)."""
        address = unmapped(address)
        for entry in self.entries:
            if entry.port is not None and entry.port != port:
                continue
            if entry.network is not None:
                if address.version == entry.network.version and address in entry.network:
                    return True
            elif entry.name is not None:
                try:
                    found = self.resolve(entry.name, port, deadline)
                except MailConnectionError:
                    continue  # an entry that does not resolve allows nothing
                if address in {unmapped(a) for a in found}:
                    return True
        return False


def resolve(host: str, port: int, deadline: float) -> list[Address]:
    """Every address `host` resolves to (TCP), in the resolver's order; MailConnectionError
    `name not resolved`, or `timed out` when the resolver does not answer by `deadline`."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise failure(MailConnectionError, Category.TIMED_OUT, f"no time left to resolve {name}")
    future: Future[list[tuple[Any, ...]]] = _executor().submit(_getaddrinfo, name, port)
    try:
        infos = future.result(timeout=remaining)
    except FutureTimeout:
        future.cancel()
        raise failure(MailConnectionError, Category.TIMED_OUT, f"resolving {name} timed out")
    except (OSError, UnicodeError, ValueError) as exc:
        raise failure(MailConnectionError, Category.NAME_NOT_RESOLVED, f"{name}: {exc}")
    addresses: list[Address] = []
    for info in infos:
        sockaddr = info[4]
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise failure(MailConnectionError, Category.NAME_NOT_RESOLVED, f"{name}: no address")
    return addresses


def _getaddrinfo(name: str, port: int) -> list[tuple[Any, ...]]:
    return list(socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP))


def _executor() -> ThreadPoolExecutor:
    """The resolver threads of this process (a forked worker starts its own: the parent's
    threads do not exist in the child)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (
                os.getpid(),
                ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve"),
            )
        return _pool[1]
