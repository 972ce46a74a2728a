"""The inventory's data as pyinfra merges it (all.py overlaid by the environment's file)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def group_data(env: str) -> dict:
    data: dict = {}
    for name in ("all", env):
        namespace: dict = {}
        exec((ROOT / "inventories" / "group_data" / f"{name}.py").read_text(), namespace)
        data.update({k: v for k, v in namespace.items() if not k.startswith("__")})
    return data


def all_packages(env: str) -> list[str]:
    """The Debian packages of a host with every role (what the test hosts' image offers)."""
    data = group_data(env)
    every = list(data["packages"])
    for role in ("api", "workers", "db", "mail"):
        every += data["role_packages"][role]
    for tls_packages in data["tls_packages"].values():  # one image for every TLS mode
        every += tls_packages
    return sorted(set(every))
