"""Packages, without letting their services start on a half-written configuration."""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from tasks import roles

POLICY_RC = "/usr/sbin/policy-rc.d"


def install_packages() -> list:
    """Install what is missing; while installing, policy-rc.d keeps services from starting."""
    installed = host.get_fact(DebPackages)
    wanted = list(host.data.packages)
    for role in sorted(roles.of()):
        wanted += host.data.role_packages.get(role, [])
    if roles.has("api", "mail"):
        wanted += host.data.tls_packages.get(host.data.tls_mode, [])
    missing = [p for p in dict.fromkeys(wanted) if p not in installed]
    if not missing:
        return []  # nothing to do, and nothing reported: a second run changes nothing
    policy = files.put(
        name="Keep package installs from starting services (policy-rc.d)",
        src=_policy_rc(),
        dest=POLICY_RC,
        mode="755",
    )
    install = apt.packages(
        name=f"Install {', '.join(missing)}",
        packages=missing,
        update=True,
        no_recommends=True,
    )
    allow = files.file(name="Allow services to start again", path=POLICY_RC, present=False)
    return [policy, install, allow]


def _policy_rc():
    import io

    return io.StringIO(
        "#!/bin/sh\n# Written by the emailservice deploy during package installs.\nexit 101\n"
    )
