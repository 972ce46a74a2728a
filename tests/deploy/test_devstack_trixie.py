"""`make dev` and `make stop` on Debian 13: the README's local stack brought up inside a booted
trixie host (Dovecot 2.4, PostgreSQL 17, Postfix 3.10, Python 3.13), where it installs its own
servers, seeds the demo and carries a mail round trip, then stops.

The host is offline. Its apt repository offers the stack's packages, which the image does not
install: `make dev` installs them itself, from `apt-get update` on, as on a fresh machine. The
virtualenv is made by the Makefile's own script (which installs python3-venv) and filled from
the deploy's wheelhouse for Python 3.13 (tasks/release.py), plus the one development package
`make dev` runs (watchfiles, for `serve --reload`), with `pip --no-index`; the stamp file then
tells make that `.venv` is ready, and `make dev` runs exactly as on a developer's machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tasks import release
from tests.deploy.deployment import ROOT, snapshot
from tests.deploy.testhost import TestHost, boot_test_host, ensure_tools

pytestmark = [pytest.mark.level4, pytest.mark.slow, pytest.mark.timeout(900)]

# What devstack/packages.py installs for `make dev` (the servers), what scripts/ensure-venv
# installs (python3-venv), and make itself (the README's `apt-get install -y git make`). The
# host's repository holds nothing else: should the stack come to need another package, `make
# dev` fails here naming it.
STACK_PACKAGES = [
    "postgresql",
    "redis-server",
    "postfix",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "openssl",
]
PACKAGES = [*STACK_PACKAGES, "python3-venv", "make"]
CLONE = "/root/emailservice"  # root's home is private: the stack relocates its state dir
WHEELS = "/root/wheels"
PYTHON = "3.13"  # Debian 13's
# The development packages `make dev` runs beyond the service's own (requirements.lock): the
# API's --reload, at the versions this machine's `make .venv/.installed` chose.
DEV_RUNTIME = ("watchfiles", "anyio")
READY = "Ctrl-C or `make stop` stops everything."
API = "http://127.0.0.1:5000"  # make dev's API_HOST and API_PORT defaults


def dev_pins() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in DEV_RUNTIME]


def dev_wheels() -> Path:
    """Python 3.13 wheels of DEV_RUNTIME, downloaded once into build/ (like the wheelhouse)."""
    pins = dev_pins()
    dest = ROOT / "build" / "devstack-wheels" / PYTHON
    marker = dest / (".pins-" + "-".join(pins))
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        downloaded = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
            + ["--no-deps", *release.target(PYTHON), "-d", str(dest), *pins],
            capture_output=True,
            text=True,
        )
        assert downloaded.returncode == 0, downloaded.stderr
        marker.touch()
    return dest


def upload(host: TestHost, dirs: dict[str, Path], dest: str) -> None:
    """Copy local directories into `dest` on the host (one tar stream over SSH)."""
    command = host.ssh_command(f"mkdir -p {dest} && tar -x -C {dest}")
    with subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            for arcname, path in dirs.items():
                tar.add(path, arcname=arcname, filter=_no_links_out)
        proc.stdin.close()
        assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""


def _no_links_out(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    # The snapshot's build/ is a link to this clone's build/: not part of the source.
    return None if member.name.endswith("/build") and member.issym() else member


def run(host: TestHost, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command in the clone on the host, as root; fails the test with its output."""
    result = host.run(f"cd {CLONE} && {command}", timeout=timeout)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n" + (
        result.stderr
    )
    return result


def missing_packages(host: TestHost) -> list[str]:
    query = "dpkg-query -W -f '${Package} ${db:Status-Status}\\n' " + " ".join(STACK_PACKAGES)
    out = host.run(query).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in STACK_PACKAGES if p not in installed]


def dev_log(host: TestHost, unit: str) -> str:
    return host.run(f"journalctl -u {unit} --no-pager -o cat").stdout


def make_dev(host: TestHost, unit: str) -> str:
    """Start `make dev` in the clone (as a transient unit: it runs until stopped); return its
    output once it says it is ready (after the demo seed)."""
    run(
        host,
        f"systemd-run --quiet --unit={unit} --working-directory={CLONE} "
        "--setenv=HOME=/root make dev",
    )
    deadline = time.monotonic() + 240
    while READY not in (log := dev_log(host, unit)):
        state = host.run(f"systemctl is-active {unit}").stdout.strip()
        assert state in ("active", "activating"), f"make dev ended ({state}):\n{log[-6000:]}"
        assert time.monotonic() < deadline, f"make dev not ready in 240 s:\n{log[-6000:]}"
        time.sleep(1)
    assert "make: ***" not in log, log[-3000:]
    return log


def make_stop(host: TestHost, unit: str, info: dict) -> None:
    """`make stop`, then check that nothing `make dev` started is left."""
    run(host, "make stop", timeout=120)
    assert host.run(f"systemctl is-active {unit}").stdout.strip() != "active"
    status = host.run(f"cd {CLONE} && .venv/bin/python -m devstack status --name dev")
    assert status.returncode == 1, status.stdout + status.stderr
    assert "postgres=NO  redis=NO  dovecot=NO  postfix=NO" in status.stdout, status.stdout
    # The stack's daemons and the service's processes are gone (the host's own Debian services,
    # which the package installs started, are not its business).
    pids = " ".join(str(pid) for pid in info["pids"].values())
    left = host.run(f"ps -o pid=,args= -p {pids}; pgrep -a -f 'app[.]cli'")
    assert left.stdout.strip() == "", left.stdout
    assert "dev stack stopped (data kept in .stack/dev)" in dev_log(host, unit)


def test_make_dev_on_debian_13_installs_its_servers_seeds_sends_and_stops(tmp_path):
    ensure_tools()
    timings: dict[str, float] = {}
    began = time.monotonic()
    source = snapshot(tmp_path / "source")
    wheelhouse = release.build().wheelhouse
    extra = dev_wheels()
    with boot_test_host(uuid.uuid4().hex[:6], PACKAGES, release="trixie") as host:
        timings["boot"] = time.monotonic() - began
        # The image holds none of the servers (openssl comes with its ca-certificates).
        absent = missing_packages(host)
        assert absent == STACK_PACKAGES[:5], absent
        upload(host, {".": source}, CLONE)
        upload(host, {"release": wheelhouse, "dev": extra}, WHEELS)

        step = time.monotonic()
        # The README's prerequisite (the clone is copied in: no git needed).
        run(host, "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y make")
        # The Makefile's recipe for .venv/.installed, offline: its venv script, then the wheels.
        made = run(host, "scripts/ensure-venv python3 .venv").stdout
        assert "installing python3-venv" in made, made
        pip = f".venv/bin/pip install --quiet --no-index --find-links {WHEELS}/release"
        run(host, f"{pip} --require-hashes -r {WHEELS}/release/requirements-build.lock")
        run(host, f"{pip} --require-hashes --no-build-isolation -r requirements.lock")
        run(host, f"{pip} --find-links {WHEELS}/dev {' '.join(dev_pins())}")
        run(host, f"{pip} --no-build-isolation --no-deps -e . && touch .venv/.installed")
        python = run(host, ".venv/bin/python -c 'import sys; print(sys.version)'").stdout
        assert python.startswith(PYTHON + "."), python
        timings["venv"] = time.monotonic() - step

        step = time.monotonic()
        log = make_dev(host, "make-dev")
        timings["make dev"] = time.monotonic() - step
        # It installed the servers itself, from the host's apt repository.
        assert f"devstack: installing {' '.join(absent)} ..." in log
        assert missing_packages(host) == []

        info = json.loads(run(host, "cat .stack/dev/stack.json").stdout)
        assert info["state_dir"].startswith("/var/tmp/emailservice-stack/dev-")
        dovecot = run(host, "dovecot --version").stdout
        assert dovecot.startswith("2.4."), dovecot
        conf = run(host, f"cat {info['state_dir']}/dovecot/dovecot.conf").stdout
        assert "dovecot_config_version = 2.4.0" in conf
        postgres = run(host, f"readlink /proc/{info['pids']['postgres']}/exe").stdout
        assert postgres.strip() == "/usr/lib/postgresql/17/bin/postgres", postgres

        step = time.monotonic()
        check = f".venv/bin/python tests/deploy/dev_roundtrip.py {info['state_dir']} {API}"
        seen = json.loads(run(host, check, timeout=240).stdout)
        timings["round trip"] = time.monotonic() - step
        assert seen["account"]["email"] == "alice@example.test"
        assert seen["account"]["state"] == "active"
        assert "Lunch on Thursday?" in seen["seeded_subjects"]
        assert seen["outbox"]["state"] == "sent" and seen["outbox"]["attempts"] == 1
        assert seen["outbox"]["smtp_reply"].startswith("250")
        assert seen["delivered"]["from"]["email"] == "alice@example.test"

        step = time.monotonic()
        make_stop(host, "make-dev", info)
        timings["make stop"] = time.monotonic() - step

        # Started again, it keeps its data: no install, the same state, account and mail.
        step = time.monotonic()
        again = make_dev(host, "make-dev-again")
        assert "devstack: installing" not in again
        info = json.loads(run(host, "cat .stack/dev/stack.json").stdout)
        kept = json.loads(run(host, f"{check} --kept {shlex.quote(seen['subject'])}").stdout)
        assert kept["account"] == seen["account"]
        make_stop(host, "make-dev-again", info)
        timings["restart"] = time.monotonic() - step
    timings["total"] = time.monotonic() - began
    print(
        "make dev on trixie: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        file=sys.stderr,
    )
