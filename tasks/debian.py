"""The Debian release of the host being deployed, read from its facts, and what differs by release.

Debian 13 ("trixie", stable) and Debian 12 ("bookworm", oldstable) are both supported. The
templates are the same for both: where a server's configuration differs, a template gets the
version it is rendered for (Dovecot 2.4 changed its configuration format; nginx 1.25 made http2
a directive) and the tasks take paths and unit names from here (PostgreSQL's major version is in
both). The release comes from /etc/os-release (pyinfra's LinuxDistribution fact): a host's
release decides, never the machine that deploys.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import LinuxDistribution


@dataclass(frozen=True)
class Release:
    """What the deploy needs to know of a Debian release's packages."""

    version: int
    codename: str
    postgresql: int  # major version: /etc/postgresql/<n>/main, unit postgresql@<n>-main
    dovecot: str  # configuration format of templates/dovecot/dovecot.conf.j2
    python: str  # the release virtualenv's interpreter (the wheels must be built for it)
    nginx_http2_directive: bool  # `http2 on;` (nginx >= 1.25.1) rather than `listen ... http2`


TRIXIE = Release(
    13, "trixie", postgresql=17, dovecot="2.4", python="3.13", nginx_http2_directive=True
)
BOOKWORM = Release(
    12, "bookworm", postgresql=15, dovecot="2.3", python="3.11", nginx_http2_directive=False
)
SUPPORTED = {release.version: release for release in (TRIXIE, BOOKWORM)}


def release_of(distribution: dict, host_name: str) -> Release:
    """The supported release a LinuxDistribution fact describes; a clear error otherwise."""
    name, major = distribution.get("name"), distribution.get("major")
    if name == "Debian" and major in SUPPORTED:
        return SUPPORTED[major]
    meta = distribution.get("release_meta") or {}
    seen = meta.get("PRETTY_NAME") or f"{name} {major}"
    supported = " or ".join(f"Debian {r.version} ({r.codename})" for r in SUPPORTED.values())
    raise PyinfraError(f"{host_name} runs {seen}; the deploy supports {supported}")


def release() -> Release:
    """The release of the host being deployed."""
    return release_of(host.get_fact(LinuxDistribution), host.name)
