"""Which parts of the service a host runs, from the inventory's groups.

Roles are the groups `api` (nginx + API instances), `workers` (RQ workers; the first such host
also runs the scheduler and the IDLE watcher), `db` (PostgreSQL, Redis, backups) and `mail`
(Postfix, Dovecot). A host in none of these groups has every role: the one-host layout of
vagrant and staging. With split roles, hosts reach each other at their `private_address` (host
data; the inventory name when unset): the db host's PostgreSQL and Redis listen there, with
passwords, and its firewall lets in only the app (api/workers) hosts' private addresses.
"""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api.host import Host

ROLES = ("api", "workers", "db", "mail")
APP = ("api", "workers")
# What app hosts reach on a db host over the private network.
DB_PORTS = {"postgresql": 5432, "redis": 6379}


def of(target: Host | None = None) -> frozenset[str]:
    """The roles of `target` (default: the host being deployed)."""
    target = target or host
    mine = {group for group in target.groups if group in ROLES}
    return frozenset(mine or ROLES)


def has(*roles: str) -> bool:
    """Whether the host being deployed has any of `roles`."""
    return bool(of() & set(roles))


def hosts_with(*roles: str) -> list[Host]:
    """Every host of the inventory with any of `roles`, in inventory order."""
    return [h for h in inventory if of(h) & set(roles)]


def private_address(target: Host | None = None) -> str:
    target = target or host
    return target.data.get("private_address") or target.name


def first(*roles: str) -> bool:
    """Whether this host is the first with `roles`: singletons (scheduler, IDLE watcher,
    migrations) run there only."""
    found = hosts_with(*roles)
    return bool(found) and found[0].name == host.name


def split() -> bool:
    """Whether some app host has no database of its own: then PostgreSQL and Redis are
    reached over the private network, with passwords."""
    return any("db" not in of(h) for h in hosts_with(*APP))


def db_address() -> str:
    """Where this host's service reaches PostgreSQL and Redis."""
    if "db" in of():
        return "127.0.0.1"
    databases = hosts_with("db")
    if not databases:
        raise ValueError("no host has the db role: add one to the inventory's `db` group")
    return private_address(databases[0])


def remote_app_addresses() -> list[str]:
    """Private addresses of the app hosts other than this one (the db host's allowed clients)."""
    return sorted({private_address(h) for h in hosts_with(*APP) if h.name != host.name})
