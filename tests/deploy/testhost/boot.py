"""Booting a test host from its image, waiting until it is up, and tearing it down again.

Every run starts from the pristine image:

    SYSTEMD_NSPAWN_API_VFS_WRITABLE=network systemd-nspawn --boot
        --directory=<image>/rootfs --volatile=overlay --register=no --keep-unit
        --machine=es-<name> --hostname=<hostname> --network-namespace-path=/run/netns/es-<name>
        --capability=CAP_NET_ADMIN --bind-ro=<image>/repo:/srv/debian-cache
        --load-credential=ssh.authorized_keys.root:<run>/authorized_keys
        --load-credential=network.hosts:<run>/hosts
        --resolv-conf=off --timezone=off --link-journal=no --console=read-only

started detached (new session, stdin /dev/null, console to `<run>/console.log`, whose tail is
in every error), under `setpriv --pdeathsig=TERM` so that a killed test run powers its hosts
off. `--register=no --keep-unit` are needed here (no systemd as PID 1 on this machine).

* The key is injected with a systemd credential: systemd's tmpfiles `provision.conf` (Debian 12
  and 13) writes it
  to /root/.ssh/authorized_keys (0600) at boot, as a real file in the overlay, the way
  cloud-init provisions a cloud host; /etc/hosts comes the same way, and the hostname is set with
  --hostname and written to /etc/hostname after boot, so the deploy may still change all three.
* Overlay: `--volatile=overlay` puts a tmpfs (a quarter of RAM: 5.9 GB on this 23 GB machine) over
  the read-only image. Checked here with the deploy's full package list: apt installs, PostgreSQL's
  cluster creation (initdb), python3 -m venv and the start of PostgreSQL, Redis, Postfix, Dovecot
  and nginx all work on it (about 400 MB written), and the image is untouched afterwards. Several
  hosts boot from one image at once. So no copy of the image is needed.
* Network: a namespace and a veth pair of its own, made before boot (network.py).
* Ready when `ssh root@<address> systemctl is-system-running --wait` prints running or degraded
  (failed units are printed if degraded); boot_timeout (default 180 s) gives a clear error.
* Stop: SIGTERM to systemd-nspawn (clean power-off), SIGKILL after stop_timeout, then SIGKILL to
  anything still in the namespace, delete veth and namespace, remove the run dir. Safe to call
  twice and after a failed boot. Each host is recorded in /run/emailservice-testhost/hosts/ with
  its owner's pid: a later boot tears down hosts whose test run died, and a stale namespace or
  veth of the same name is removed before a boot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.deploy.testhost.image import DEFAULT_RELEASE, REPO_MOUNT, Image, use_image
from tests.deploy.testhost.machine import (
    ENV,
    STATE_DIR,
    TestHostError,
    dies_with_us,
    ensure_tools,
    file_tail,
    remove_tree,
    require_root,
    say,
)
from tests.deploy.testhost.network import attach, link_exists, netns_exists, remove_network
from tests.deploy.testhost.ssh import SSHTarget, make_key

# Debian 13's systemd (257) can take its 90 s default to stop root's user manager (user@0,
# started by our SSH logins through pam_systemd) when the host powers off soon after a login:
# seen hanging on "Job user@0.service/stop running" in its exit.target. Nothing in the tests
# uses the user manager, so its stop is capped (a drop-in bound into each boot, not the image).
USER_MANAGER_STOP = "[Service]\nTimeoutStopSec=5s\n"
# Likewise Debian 13's dovecot.service (started by the package's install, beside the dev
# stack's own Dovecot in the `make dev` test): seen at power-off as "Job dovecot.service/stop
# running (59s / 1min 30s)", past the 60 s a power-off is given. Capped at 15 s, well above a
# normal stop; the product installs no drop-in of its own for it.
DOVECOT_STOP = "[Service]\nTimeoutStopSec=15s\n"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$")  # es-<name> fits IFNAMSIZ (15)


# Records of running hosts, to tear down those whose test run died


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_path(name: str) -> Path:
    return STATE_DIR / "hosts" / f"{name}.json"


def _owner_alive(record: dict) -> bool:
    return _process_start(record["owner_pid"]) == record["owner_start"]


def _teardown_record(record: dict) -> None:
    """Tear down what a dead run left: its nspawn, namespace, veth and run dir."""
    pid = record.get("nspawn_pid")
    if pid and _process_start(pid) == record.get("nspawn_start"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_network(record["netns"], record["veth"])
    rundir = Path(record["rundir"])
    if rundir.is_dir() and rundir.name.startswith("emailservice-testhost-"):
        remove_tree(rundir)


def _sweep_orphans() -> None:
    for path in sorted((STATE_DIR / "hosts").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _owner_alive(record):
            continue
        say(f"tearing down {record['name']}, left running by a test run that died")
        _teardown_record(record)
        path.unlink(missing_ok=True)


class TestHost(SSHTarget):
    """A booted Debian host reached over SSH as root. Made by boot_test_host()."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, image: Image, hostname: str | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"name must match {_NAME.pattern} (it names a veth): {name!r}")
        self.rundir = Path(tempfile.mkdtemp(prefix=f"emailservice-testhost-{name}-"))
        super().__init__(name, self.rundir / "id_ed25519")
        self.hostname = hostname or f"testhost-{name}"
        self.image = image
        self.netns = f"es-{name}"
        self.veth = f"es-{name}"  # host side; the host's side is eth0 inside the namespace
        self.machine = f"es-{name}"
        self.gateway = ""
        self.console = self.rundir / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._record: dict = {}
        self._stopped = False
        self._claimed = False
        self.exit_status: int | None = None  # systemd-nspawn's, once stopped (0: clean power-off)

    def __repr__(self) -> str:
        return f"<TestHost {self.name} {self.address or '(not booted)'}>"

    def console_log(self, lines: int = 40) -> str:
        """The tail of the container's console (systemd's boot messages)."""
        return file_tail(self.console, lines)

    # ---- life cycle

    def _save_record(self) -> None:
        path = record_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._record))

    def _claim_name(self) -> None:
        path = record_path(self.name)
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
                if _owner_alive(record):
                    raise TestHostError(
                        f"a test host named {self.name} is already running "
                        f"(test run pid {record['owner_pid']})"
                    )
                _teardown_record(record)
        if netns_exists(self.netns) or link_exists(self.veth):
            say(f"removing a stale namespace/veth {self.netns} of an earlier run")
            remove_network(self.netns, self.veth)
        self._claimed = True  # from here on, the namespace, veth and record are ours
        self._record = {
            "name": self.name,
            "owner_pid": os.getpid(),
            "owner_start": _process_start(os.getpid()),
            "netns": self.netns,
            "veth": self.veth,
            "rundir": str(self.rundir),
        }
        self._save_record()

    def _start(self, boot_timeout: float) -> None:
        started = time.monotonic()
        self._claim_name()
        keys = make_key(self.ssh_key, self.machine)
        short = self.hostname.split(".")[0]
        names = self.hostname if short == self.hostname else f"{self.hostname} {short}"
        hosts = self.rundir / "hosts"
        hosts.write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
            "ff02::2\tip6-allrouters\n"
        )
        user_stop = self.rundir / "user-stop.conf"
        user_stop.write_text(USER_MANAGER_STOP)
        dovecot_stop = self.rundir / "dovecot-stop.conf"
        dovecot_stop.write_text(DOVECOT_STOP)
        self.gateway, self.address = attach(self.name, self.netns, self.veth)
        argv = [
            "systemd-nspawn",
            "--boot",
            f"--directory={self.image.rootfs}",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            f"--machine={self.machine}",
            f"--hostname={self.hostname}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            # nspawn grants CAP_NET_ADMIN only with networks it makes itself; without it, nft
            # fails ("Operation not permitted") and the deploy's firewall cannot be tested.
            "--capability=CAP_NET_ADMIN",
            f"--bind-ro={self.image.repo}:{REPO_MOUNT}",
            f"--load-credential=ssh.authorized_keys.root:{keys}",
            f"--load-credential=network.hosts:{hosts}",
            f"--bind-ro={user_stop}:/etc/systemd/system/user@.service.d/testhost-stop.conf",
            f"--bind-ro={dovecot_stop}:/etc/systemd/system/dovecot.service.d/testhost-stop.conf",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
        ]
        with open(self.console, "wb") as console:
            self._process = subprocess.Popen(
                dies_with_us("TERM", argv),  # a killed test run: clean power-off
                # /proc/sys/net writable (the host's own namespace), the rest of /proc/sys not.
                env={**ENV, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: a Ctrl-C in the terminal is not its business
            )
        self._record["nspawn_pid"] = self._process.pid
        self._record["nspawn_start"] = _process_start(self._process.pid)
        self._save_record()
        self._wait_until_up(started + boot_timeout)
        self.run(f"echo {shlex.quote(self.hostname)} > /etc/hostname", check=True, timeout=30)
        say(
            f"{self.machine} booted in {time.monotonic() - started:.1f} s at {self.address} "
            f"({self.image.release} image {self.image.key})"
        )

    def _wait_until_up(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise TestHostError(
                    f"systemd-nspawn for {self.machine} exited with {self._process.returncode} "
                    f"before the host came up. Console:\n{self.console_log()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TestHostError(
                    f"{self.machine} at {self.address} was not up (ssh + systemctl "
                    f"is-system-running --wait) within the boot timeout. Console:\n"
                    f"{self.console_log()}"
                )
            try:
                result = self.run(
                    "systemctl is-system-running --wait",
                    timeout=max(1.0, min(remaining, 60)),
                    connect_timeout=2,
                )
            except subprocess.TimeoutExpired:
                continue
            state = result.stdout.strip()
            if result.returncode == 255 or not state:  # sshd not listening yet
                time.sleep(0.2)
                continue
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.run("systemctl --failed --no-legend --plain", timeout=30)
                    say(f"{self.machine} is degraded; failed units:\n{failed.stdout.strip()}")
                return
            if state in ("initializing", "starting"):
                time.sleep(0.2)
                continue
            raise TestHostError(
                f"{self.machine} reached state {state!r}. Console:\n{self.console_log()}"
            )

    def power_off(self) -> None:
        """Tell the host to power off (SIGTERM to nspawn) and return; stop() waits for it."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def stop(self, stop_timeout: float = 60) -> None:
        """Power off (SIGTERM to nspawn), SIGKILL after stop_timeout, remove veth, namespace and
        run dir. Safe to call twice and after a failed boot. A power-off that outlasts
        stop_timeout is an error that shows the console (the unit systemd was waiting for)."""
        if self._stopped:
            return
        started = time.monotonic()
        errors: list[str] = []
        process = self._process
        self.power_off()
        if process is not None:  # returns at once if it had already exited
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                errors.append(
                    f"{self.machine} did not power off in {stop_timeout} s: killed. "
                    f"Console:\n{self.console_log()}"
                )
                process.kill()
                process.wait(30)
        steps = [lambda: remove_tree(self.rundir)]
        if self._claimed:  # never another live host's namespace of the same name
            steps.append(lambda: remove_network(self.netns, self.veth))
            steps.append(lambda: record_path(self.name).unlink(missing_ok=True))
        for step in steps:
            try:
                step()
            except Exception as error:  # keep tearing down; report at the end
                errors.append(str(error))
        self._stopped = True
        if process is not None:
            self.exit_status = process.returncode
        how = {None: "never started", 0: "clean power-off"}.get(
            self.exit_status, f"systemd-nspawn exit status {self.exit_status}"
        )
        say(f"{self.machine} torn down in {time.monotonic() - started:.1f} s ({how})")
        if errors:
            raise TestHostError(f"tearing down {self.machine}: " + "; ".join(errors))


@contextlib.contextmanager
def boot_test_host(
    name: str,
    packages: Sequence[str],
    *,
    hostname: str | None = None,
    boot_timeout: float = 180,
    release: str = DEFAULT_RELEASE,
) -> Iterator[TestHost]:
    """Boot a fresh Debian host whose apt offers `packages` offline; power it off on exit.

    name: short unique id ([a-z0-9-], up to 12 characters), e.g. a few hex digits.
    hostname: the host's name (default testhost-<name>); with a dot it is also an FQDN.
    release: the Debian release, one of image.RELEASES ("trixie", "bookworm").
    """
    if not _NAME.match(name):
        raise ValueError(f"name must match {_NAME.pattern} (it names a veth): {name!r}")
    require_root()
    ensure_tools()
    _sweep_orphans()
    with use_image(packages, release) as image:
        host = TestHost(name, image, hostname)
        try:
            host._start(boot_timeout)
            yield host
        finally:
            host.stop()
