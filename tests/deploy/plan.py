"""Plan the whole deploy without a target (level 2 of the deploy tests in docs/deploy.md).

Runs the real pyinfra CLI (`--dry --diff`) on the local connector, with every fact answering
what a fresh Debian host would (each fact's own default: no packages, no files, no units), so
no command runs anywhere and every operation is planned as on a first deploy.

    python tests/deploy/plan.py ENV [RELEASE [GROUPS]]

RELEASE: trixie (the default) or bookworm. GROUPS: role groups the host is in, comma-separated
(e.g. `mail`: a mail host of a split layout); none: every role.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from pyinfra.api.host import Host

ROOT = Path(__file__).resolve().parents[2]


# Facts whose "nothing there" is an empty collection rather than their default of None.
EMPTY = {
    "Groups": list,
    "Users": dict,
    "DebPackages": dict,
    "SystemdEnabled": dict,
    "SystemdStatus": dict,
    "PostgresRoles": dict,
    "PostgresDatabases": dict,
}


# What a Debian host says of its release, as pyinfra's LinuxDistribution fact reads it.
RELEASES = {
    "trixie": {"name": "Debian", "major": 13, "minor": 8, "release_meta": {"ID": "debian"}},
    "bookworm": {"name": "Debian", "major": 12, "minor": 12, "release_meta": {"ID": "debian"}},
}

# And what a Debian host says of itself otherwise.
DEBIAN = {
    "Os": "Linux",
    "Kernel": "Linux",
    "Arch": "x86_64",
    "Hostname": "debian",
    "User": "root",
    "Home": "/root",
    "TmpDir": "/tmp",
    "Command": "",
    "LinuxName": "Debian",
}


def fresh_fact(self, fact_cls, *args, **kwargs):
    if fact_cls.__name__ == "Which":  # every tool a Debian host has
        return f"/usr/bin/{kwargs.get('command') or args[0]}"
    if fact_cls.__name__ in DEBIAN:
        return DEBIAN[fact_cls.__name__]
    fact = fact_cls()
    value = fact.default() if hasattr(fact, "default") else None
    if value is None and fact_cls.__name__ in EMPTY:
        return EMPTY[fact_cls.__name__]()
    return value


def main(env: str, release: str = "trixie", groups: str = "") -> int:
    DEBIAN["LinuxDistribution"] = RELEASES[release]
    DEBIAN["OsVersion"] = str(RELEASES[release]["major"])
    Host.get_fact = fresh_fact  # type: ignore[method-assign]
    os.chdir(ROOT)  # as `make deploy` runs it: deploy.py imports tasks/ from here
    from pyinfra_cli.main import cli

    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / f"{env}.py"
        inventory.write_text(
            f'{env} = [("@local", {{}})]\n'
            + "".join(f'{group} = ["@local"]\n' for group in groups.split(",") if group)
        )
        args = [
            "--group-data",
            str(ROOT / "inventories" / "group_data"),
            str(inventory),
            str(ROOT / "deploy.py"),
            "--dry",
            "--diff",
        ]
        try:
            cli.main(args=args, prog_name="pyinfra", standalone_mode=False)
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
