"""What the deploy does per Debian release, without a host: which releases it accepts (from
pyinfra's LinuxDistribution fact) and the wheels it fetches for each release's Python."""

from __future__ import annotations

import pytest
from pyinfra.api.exceptions import PyinfraError

from tasks import debian, release


def fact(name: str | None, major: int | None, pretty: str | None = None) -> dict:
    meta = {"PRETTY_NAME": pretty} if pretty else {}
    return {"name": name, "major": major, "minor": None, "release_meta": meta}


def test_debian_13_and_12_are_read_from_the_hosts_facts():
    trixie = debian.release_of(fact("Debian", 13), "mail1")
    assert (trixie.codename, trixie.postgresql, trixie.dovecot, trixie.python) == (
        "trixie",
        17,
        "2.4",
        "3.13",
    )
    bookworm = debian.release_of(fact("Debian", 12), "mail1")
    assert (bookworm.codename, bookworm.postgresql, bookworm.dovecot, bookworm.python) == (
        "bookworm",
        15,
        "2.3",
        "3.11",
    )


@pytest.mark.parametrize(
    "distribution",
    [
        fact("Debian", 11, "Debian GNU/Linux 11 (bullseye)"),
        fact("Ubuntu", 24, "Ubuntu 24.04.1 LTS"),
        fact(None, None),  # no /etc/os-release at all
    ],
)
def test_any_other_system_is_refused_by_name(distribution):
    with pytest.raises(PyinfraError) as refused:
        debian.release_of(distribution, "mail1")
    message = str(refused.value)
    assert message.startswith("mail1 runs ")
    assert "Debian 13 (trixie) or Debian 12 (bookworm)" in message
    pretty = distribution["release_meta"].get("PRETTY_NAME")
    assert pretty is None or pretty in message


def test_the_wheelhouse_is_fetched_for_each_releases_python_wheels_only():
    assert release.PYTHONS == ("3.11", "3.13")
    for python in release.PYTHONS:
        args = release.target(python)
        assert args[args.index("--python-version") + 1] == python
        abis = [args[i + 1] for i, a in enumerate(args) if a == "--abi"]
        assert abis == ["cp" + python.replace(".", ""), "abi3", "none"]
        # A pin without a wheel for this Python fails the download (and `make lock`), except the
        # pure-Python packages that publish only an sdist.
        assert "--only-binary=:all:" in args
        assert [a for a in args if a.startswith("--no-binary=")] == ["--no-binary=crontab"]
