"""The deploy tests' Debian host (tests/deploy/testhost/): booted, reachable, isolated, offline.

Needs root; what this machine lacks is installed (ensure_tools), never skipped. The first run
builds the image (about a minute), later boots take about a second.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.deploy.testhost import (
    TestHost,
    TestHostError,
    boot_test_host,
    ensure_tools,
    image_key,
    machine,
)
from tests.deploy.testhost.boot import record_path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["nginx", "curl", "nftables"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _name() -> str:
    return f"t{uuid.uuid4().hex[:7]}"


def _nspawn_pids(machine: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and f"--machine={machine}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def _assert_nothing_left(name: str, rundir: Path) -> None:
    machine = f"es-{name}"
    assert not _nspawn_pids(machine), "systemd-nspawn still running"
    assert not Path("/run/netns", machine).exists(), "network namespace left"
    assert subprocess.run(["ip", "link", "show", "dev", machine], capture_output=True).returncode
    assert not rundir.exists(), "run dir left"
    assert not record_path(name).exists(), "record left"
    assert not Path("/run/systemd/nspawn/propagate", machine).exists(), "nspawn dir left"


def test_ensure_tools_installs_what_is_missing(monkeypatch: pytest.MonkeyPatch):
    """The install path, without removing anything from this machine: debootstrap is reported
    missing once, so apt-get installs it (a no-op when it is there) and the check passes."""
    ensure_tools()  # the real state: all there, nothing to do
    real = machine.which
    asked: list[str] = []

    def which(tool: str) -> str | None:
        asked.append(tool)
        return None if tool == "debootstrap" and asked.count(tool) == 1 else real(tool)

    monkeypatch.setattr(machine, "which", which)
    ensure_tools()
    assert asked.count("debootstrap") == 2  # missing, installed, then found


@pytest.fixture(scope="module")
def host():
    ensure_tools()
    with boot_test_host(_name(), PACKAGES) as booted:
        yield booted


def test_ssh_reaches_a_booted_systemd(host: TestHost):
    result = host.run("id -u; ps -o comm= -p 1; systemctl is-system-running", check=False)
    uid, pid1, state = result.stdout.split()
    assert (uid, pid1) == ("0", "systemd")
    assert state in ("running", "degraded"), host.run("systemctl --failed").stdout
    assert host.ssh_user == "root"
    assert stat.S_IMODE(host.ssh_key.stat().st_mode) == 0o600
    assert host.ssh_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "BatchMode=yes" in host.ssh_options
    # The per-run key was provisioned into the host (not baked into the image).
    assert host.run("cat /root/.ssh/authorized_keys", check=True).stdout == (
        host.ssh_key.with_suffix(".pub").read_text()
    )
    assert host.run("hostname", check=True).stdout.strip() == host.hostname
    # Debian 13 unless asked otherwise (test_each_release_boots_from_its_own_image).
    assert "Debian GNU/Linux 13" in host.run("cat /etc/os-release", check=True).stdout


def test_the_host_has_a_network_of_its_own(host: TestHost):
    addresses = host.run("ip -4 -o addr show", check=True).stdout
    assert f"inet {host.address}/30" in addresses
    assert host.gateway != host.address
    # Nothing listens in the fresh host but sshd: this machine's PostgreSQL and Redis are not here.
    listening = host.run("ss -Hltn", check=True).stdout.split("\n")
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listening if line.strip()}
    assert ports == {"22"}, listening
    for port in (5432, 6379):
        probe = host.run(f"timeout 5 bash -c '</dev/tcp/127.0.0.1/{port}'")
        assert probe.returncode != 0 and "refused" in probe.stderr, (port, probe)
    # Offline: no route out of the host, and no name server.
    assert host.run("ip route get 1.1.1.1").returncode != 0
    assert host.run("getent hosts deb.debian.org").returncode != 0
    # From this machine, the host's sshd answers at its own address.
    with socket.create_connection((host.address, 22), timeout=5) as ssh:
        assert ssh.recv(64).startswith(b"SSH-2.0-")


def _install(host: TestHost, packages: str) -> subprocess.CompletedProcess[str]:
    command = f"apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {packages}"
    install = host.run(command, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    return install


def test_apt_installs_from_the_offline_repo(host: TestHost):
    sources = host.run("cat /etc/apt/sources.list; ls /etc/apt/sources.list.d", check=True).stdout
    assert sources.strip() == "deb [trusted=yes] file:/srv/debian-cache ./"
    # A fresh host: the deploy's packages are not preinstalled.
    assert host.run("dpkg-query -W nginx curl").returncode != 0
    install = _install(host, "curl nginx")
    assert "file:/srv/debian-cache" in install.stdout
    host.wait_for_unit("nginx.service")  # no policy-rc.d in the image: apt started it
    page = host.run("curl -sS http://127.0.0.1/", check=True).stdout
    assert "Welcome to nginx" in page
    assert "nginx" in host.journal("nginx.service")


HARDENED_UNIT = """\
[Unit]
Description=Hardening check (the settings the deploy puts on its units)

[Service]
User=hardtest
ExecStart=/usr/local/bin/hardtest
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
CapabilityBoundingSet=
ReadWritePaths=/var/lib/hardtest
"""

HARDENED_SCRIPT = """\
#!/bin/sh
out=/var/lib/hardtest/report
{
  echo "nonewprivs=$(awk '/^NoNewPrivs:/ {print $2}' /proc/self/status)"
  echo "capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
  touch /usr/hardtest 2>/dev/null && echo usr=writable || echo usr=readonly
  touch /etc/hardtest 2>/dev/null && echo etc=writable || echo etc=readonly
  touch /var/lib/hardtest/ok 2>/dev/null && echo state=writable || echo state=readonly
  echo "home=$(stat -c %a /home) root=$(stat -c %a /root)"
  test -e /tmp/outside-marker && echo tmp=shared || echo tmp=private
  test -e /dev/console && echo dev=host || echo dev=private
} > "$out.part"
mv "$out.part" "$out"
exec sleep infinity
"""


def test_hardened_unit_runs(host: TestHost):
    setup = (
        "useradd --system --no-create-home --shell /usr/sbin/nologin hardtest"
        " && install -d -o hardtest /var/lib/hardtest"
        " && touch /tmp/outside-marker"
        " && cat > /usr/local/bin/hardtest && chmod 755 /usr/local/bin/hardtest"
    )
    host.run(setup, check=True, input=HARDENED_SCRIPT)
    host.run("cat > /etc/systemd/system/hardtest.service", check=True, input=HARDENED_UNIT)
    host.run("systemctl daemon-reload && systemctl start hardtest.service", check=True)
    host.wait_for_unit("hardtest.service")
    deadline = time.monotonic() + 30
    while (report := host.run("cat /var/lib/hardtest/report")).returncode != 0:
        assert time.monotonic() < deadline, host.journal("hardtest.service")
        time.sleep(0.2)
    found = dict(item.split("=", 1) for item in report.stdout.split())
    assert found == {
        "nonewprivs": "1",  # NoNewPrivileges
        "capbnd": "0000000000000000",  # CapabilityBoundingSet=
        "usr": "readonly",  # ProtectSystem=strict
        "etc": "readonly",
        "state": "writable",  # ReadWritePaths
        "home": "0",  # ProtectHome: inaccessible
        "root": "0",
        "tmp": "private",  # PrivateTmp
        "dev": "private",  # PrivateDevices (nspawn's own /dev has a console)
    }, host.journal("hardtest.service")
    assert host.run("test -e /dev/console").returncode == 0
    assert host.run("systemctl is-active hardtest.service").stdout.strip() == "active"


def _reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


FIREWALL = """\
flush ruleset
table inet filter {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    tcp dport 22 accept
  }
}
"""


def test_the_host_may_run_its_own_firewall_and_net_sysctls(host: TestHost):
    """nftables and net.* sysctls act on the host's own namespace (nspawn needs
    --capability=CAP_NET_ADMIN and SYSTEMD_NSPAWN_API_VFS_WRITABLE=network for that);
    machine-wide sysctls stay read-only."""
    _install(host, "nginx nftables")
    host.wait_for_unit("nginx.service")
    assert _reachable(host.address, 80)
    host.run("cat > /etc/nftables.conf", check=True, input=FIREWALL)
    try:
        host.run("systemctl restart nftables.service", check=True)
        assert "policy drop" in host.run("nft list ruleset", check=True).stdout
        assert not _reachable(host.address, 80)  # dropped
        assert host.run("true").returncode == 0  # ssh still allowed
    finally:
        host.run("nft flush ruleset", check=True)
    assert _reachable(host.address, 80)
    sysctl = host.run("sysctl -w net.ipv4.tcp_syncookies=1 net.core.somaxconn=1024")
    assert sysctl.returncode == 0, sysctl.stderr
    machine_wide = host.run("sysctl -w vm.overcommit_memory=1")
    assert "permission denied" in machine_wide.stderr, machine_wide


def test_pyinfra_reaches_the_host(host: TestHost):
    data = host.pyinfra_host_data()
    argv = [
        str(ROOT / ".venv/bin/pyinfra"),
        host.address,
        "--user",
        data["ssh_user"],
        "--key",
        data["ssh_key"],
        "--data",
        "ssh_strict_host_key_checking=no",
        "--data",
        "ssh_known_hosts_file=/dev/null",
        "exec",
        "--",
        "cat /etc/debian_version",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13." in result.stdout + result.stderr  # pyinfra prints the command's output on stderr


def test_the_image_stays_pristine(host: TestHost):
    rootfs = host.image.rootfs
    assert not (rootfs / "root/.ssh/authorized_keys").exists()
    assert not (rootfs / "usr/sbin/nginx").exists()  # installed in the booted host only
    assert not (rootfs / "etc/hostname").exists()
    assert not (rootfs / "usr/sbin/policy-rc.d").exists()
    assert (rootfs / "etc/machine-id").read_text() == ""
    manifest = json.loads((host.image.path / "manifest.json").read_text())
    assert manifest["packages"] == sorted(PACKAGES)
    index = (host.image.repo / "Packages").read_text()
    assert "Package: nginx\n" in index and "Package: curl\n" in index
    assert image_key([*reversed(PACKAGES), PACKAGES[0]]) == host.image.key
    assert image_key(PACKAGES[1:]) != host.image.key


def _stanza(repo: Path, package: str) -> str:
    """The package's entry in the image's apt index."""
    return (repo / "Packages").read_text().split(f"Package: {package}\n", 1)[1].split("\n\n")[0]


def test_each_release_boots_from_its_own_image(host: TestHost):
    """Debian 12 beside Debian 13: its own base and image in the same cache, booted the same way."""
    assert host.image.release == "trixie"
    with boot_test_host(_name(), PACKAGES, release="bookworm") as old:
        os_release = old.run("cat /etc/os-release", check=True).stdout
        assert "VERSION_CODENAME=bookworm" in os_release and 'VERSION_ID="12"' in os_release
        assert old.run("systemctl is-system-running --wait").stdout.strip() in (
            "running",
            "degraded",
        )
        assert old.image.release == "bookworm"
        assert old.image.key == image_key(PACKAGES, "bookworm") != host.image.key
        assert old.image.rootfs != host.image.rootfs
        assert "Version: 1.22." in _stanza(old.image.repo, "nginx")  # bookworm's nginx
    assert "Version: 1.26." in _stanza(host.image.repo, "nginx")  # trixie's
    with pytest.raises(ValueError, match="not a release"):
        image_key(PACKAGES, "sid")


def test_leaving_the_block_leaves_nothing_running():
    name = _name()
    ns = f"es-{name}"
    # What a crashed earlier run of the same name would leave: a namespace and a veth.
    subprocess.run(["ip", "netns", "add", ns], check=True)
    veth = ["ip", "link", "add", ns, "type", "veth", "peer", "name", f"x{name}"]
    subprocess.run(veth, check=True)
    with boot_test_host(name, PACKAGES) as booted:
        assert booted.run("systemctl is-system-running --wait").stdout.strip() in (
            "running",
            "degraded",
        )
        assert _nspawn_pids(ns) and Path("/run/netns", ns).exists()
        rundir = booted.rundir
    booted.stop()  # a second stop is harmless
    assert booted.exit_status == 0, "not a clean power-off"
    _assert_nothing_left(name, rundir)


def test_a_failed_boot_leaves_nothing_running():
    name = _name()
    with pytest.raises(TestHostError, match="boot timeout"):
        with boot_test_host(name, PACKAGES, boot_timeout=0.2):
            pass
    leftovers = list(Path(tempfile.gettempdir()).glob(f"emailservice-testhost-{name}-*"))
    assert not leftovers
    _assert_nothing_left(name, Path("/nonexistent"))


def test_a_name_in_use_is_refused_and_left_alone(host: TestHost):
    with pytest.raises(TestHostError, match="already running"):
        with boot_test_host(host.name, PACKAGES):
            pass
    assert host.run("true").returncode == 0  # the live host of that name is untouched
    assert Path("/run/netns", host.netns).exists()


ORPHAN = """
import sys, time
from tests.deploy.testhost import boot_test_host
with boot_test_host(sys.argv[1], sys.argv[2:]) as host:
    print(host.rundir, flush=True)
    time.sleep(600)
"""


def test_a_host_whose_test_run_died_is_torn_down_by_the_next_boot():
    orphan = _name()
    child = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, orphan, *PACKAGES],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        rundir = Path(child.stdout.readline().strip())
        assert rundir.name.startswith(f"emailservice-testhost-{orphan}-"), rundir
    finally:
        child.send_signal(signal.SIGKILL)  # no cleanup runs in the dead test run
        child.wait()
    # Its container powers itself off (systemd-nspawn got SIGTERM when its parent died)...
    deadline = time.monotonic() + 60
    while _nspawn_pids(f"es-{orphan}"):
        assert time.monotonic() < deadline, "the orphaned container did not power off"
        time.sleep(0.2)
    # ...and what it leaves, the next boot removes.
    assert Path("/run/netns", f"es-{orphan}").exists() and rundir.exists()
    with boot_test_host(_name(), PACKAGES) as booted:
        _assert_nothing_left(orphan, rundir)
        assert booted.run("true").returncode == 0
