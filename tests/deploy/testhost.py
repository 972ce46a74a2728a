"""A real Debian 12 ("bookworm") host for the deploy tests, booted on this machine.

    ensure_tools()
    with boot_test_host("d3f2a1", ["nginx", "curl"]) as host:
        host.run("systemctl is-system-running")       # over SSH, as root, with a per-run key
        # pyinfra reaches it exactly as it reaches a user's server: host.address + host.ssh_key

What it is: a root filesystem made with debootstrap, booted with systemd as PID 1 under
`systemd-nspawn` in a network namespace of its own, reached over SSH (root, ed25519 key made per
run) at its own address. Everything needs root; nothing is left behind when the block exits.

How it is built (once, then reused)
-----------------------------------
* Cache outside the clone: /var/cache/emailservice-testhost (env EMAILSERVICE_TESTHOST_CACHE).
  `base/<key>/rootfs`: `debootstrap --variant=minbase bookworm` from http://deb.debian.org/debian
  (the mirror this machine's own /etc/apt/sources.list.d/debian.sources uses; env
  EMAILSERVICE_TESTHOST_MIRROR), then, in a chroot, dist-upgrade against bookworm,
  bookworm-updates and bookworm-security and `apt-get install --no-install-recommends` of
  BASE_PACKAGES (systemd, systemd-sysv, dbus, libpam-systemd, openssh-server, iproute2, python3,
  sudo, ca-certificates, procps). No `locales`: LANG=C.UTF-8 is built into glibc, and our ssh
  runs with `-F /dev/null` so no client LANG is forwarded. The base depends only on the recipe,
  so a changed package list does not repeat debootstrap.
* `images/<key>/`: a copy of the base (`cp -a --reflink=auto`) in which, with the chroot still
  online, `apt-get install --download-only <packages>` resolves the deploy's packages against this
  exact system (Recommends included, so the deploy may install with or without them). The .debs
  go to `images/<key>/repo/`, indexed with `dpkg-scanpackages`; the image's only apt source
  becomes `deb [trusted=yes] file:/srv/debian-cache ./`, and the repo is bind-mounted read-only
  there at boot. A flat repo without a Release file is fine for apt with `trusted=yes`. The
  deploy's packages are NOT installed in the image, apt's lists are empty (the deploy must
  `apt-get update`, as on any fresh host), and there is no policy-rc.d (handling service starts
  during installs is the deploy's job).
* <key> is a hash of (RECIPE_VERSION, suite, mirrors, base packages, sorted package list).
  Builds run under an fcntl lock (`build.lock`; a second run waits, then reuses the image), in
  `tmp/`, and are renamed into place only when complete, so an interrupted build is never
  trusted (the next build removes its leftovers, after checking nothing is mounted inside).
  debootstrap and every chroot step run under `unshare --mount --propagation private --pid
  --fork --kill-child` started by `setpriv --pdeathsig=KILL`: their proc/sys mounts vanish
  with their mount namespace, and if the test run is killed, apt and the maintainer scripts die
  with it (checked: SIGKILL in the middle of a build leaves no process and no mount). A booted
  host holds a shared lock on its image; after a build, the least recently used images beyond
  EMAILSERVICE_TESTHOST_KEEP (default 3) and those of older recipes are removed unless in use.
  Bump RECIPE_VERSION to rebuild everything (e.g. to pick up newer Debian point releases).
* Image-wide settings: empty /etc/machine-id (systemd makes one per boot; /var/lib/dbus/machine-id
  links to it), no /etc/hostname and no /etc/hosts (both are per run, below), an /etc/resolv.conf
  without servers (the host is offline: lookups fail at once instead of timing out), sshd's host
  keys from the build (clients here do not check them), LANG=C.UTF-8.

How it is booted (every run starts from the pristine image)
-----------------------------------------------------------
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
  The key is injected with a systemd credential: Debian 12's tmpfiles `provision.conf` writes it
  to /root/.ssh/authorized_keys (0600) at boot, as a real file in the overlay, the way
  cloud-init provisions a cloud host; /etc/hosts comes the same way, and the hostname is set with
  --hostname and written to /etc/hostname after boot, so the deploy may still change all three.
* Overlay: `--volatile=overlay` puts a tmpfs (a quarter of RAM: 5.9 GB on this 23 GB machine) over
  the read-only image. Checked here with the deploy's full package list: apt installs, PostgreSQL's
  cluster creation (initdb), python3 -m venv and the start of PostgreSQL, Redis, Postfix, Dovecot
  and nginx all work on it (about 400 MB written), and the image is untouched afterwards. Several
  hosts boot from one image at once. So no copy of the image is needed.
* Network: `ip netns add es-<name>`, a veth pair whose host side is `es-<name>` (gateway
  10.231.x.y+1/30) and whose other side is created directly inside the namespace as `eth0`
  (address 10.231.x.y+2/30), configured with `ip -n` before boot; lo is brought up too. No
  systemd-networkd in the image: the address is static and known before boot, and nothing inside
  the host depends on a network manager. There is no default route and this machine does not
  forward: the host can reach only its gateway, so a test's traffic cannot leave this machine. The
  /30 is the first free slot of 10.231.0.0/16 starting at a hash of the name, checked against
  every address and route on the machine under a lock (/run/emailservice-testhost/net.lock), so
  concurrent runs get different slots. The namespace gives the host its own 127.0.0.1: the
  machine's PostgreSQL (5432) and Redis (6379) are not visible inside.
* Ready when `ssh root@<address> systemctl is-system-running --wait` prints running or degraded
  (failed units are printed if degraded); boot_timeout (default 180 s) gives a clear error.
* Stop: SIGTERM to systemd-nspawn (clean power-off), SIGKILL after stop_timeout, then SIGKILL to
  anything still in the namespace, delete veth and namespace, remove the run dir. Safe to call
  twice and after a failed boot. Each host is recorded in /run/emailservice-testhost/hosts/ with
  its owner's pid: a later boot tears down hosts whose test run died, and a stale namespace or
  veth of the same name is removed before a boot.

What was found on this machine (Debian 12, kernel 6.18, cgroup v1/v2 hybrid, no systemd as PID 1)
-------------------------------------------------------------------------------------------------
* Timings (one stderr line each for build, boot and teardown): a cold build with the deploy's
  full package list (postgresql redis-server postfix dovecot-imapd dovecot-lmtpd nginx python3
  python3-venv openssl nftables ca-certificates curl ssl-cert) takes 42-51 s: the base
  (debootstrap + systemd, sshd; 211 MB) 38-45 s, then 71 .debs (89 MB) downloaded, indexed and
  checked offline in 4-6 s; a new package list on a cached base takes 3-4 s. A warm boot to
  `running` takes about 1 s; installing the full list inside the host about 32 s; teardown
  0.2 s for a bare host, 1.5 s with every service running.
* The hardening the deploy puts on its units works under nspawn with no extra option:
  ProtectSystem=strict (+ ReadWritePaths), ProtectHome=yes, PrivateTmp=yes, PrivateDevices=yes,
  NoNewPrivileges=yes and an empty CapabilityBoundingSet= (the tests check each from inside a
  unit). Debian's own hardened units (redis-server, postgresql) start too.
* nftables needs CAP_NET_ADMIN, which nspawn drops unless it made the network itself: without
  `--capability=CAP_NET_ADMIN`, `nft list ruleset` fails with "Operation not permitted". With it,
  the ruleset acts on the host's own namespace only (tested: port 80 dropped, 22 still open).
* /proc/sys is read-only under nspawn. SYSTEMD_NSPAWN_API_VFS_WRITABLE=network makes net.*
  writable (per namespace); machine-wide keys stay read-only on purpose, so e.g.
  `sysctl -w vm.overcommit_memory=1` (which Redis asks for) fails in the test host with
  "permission denied": a deploy that sets such a key must tolerate that in a container.
* This machine's bounding set lacks CAP_SYS_RESOURCE: nspawn logs "Some capabilities will not be
  set because they are not in the current bounding set", and no limit can go above this
  machine's hard limits (NOFILE 20000 here; redis-server's LimitNOFILE=65535 ends up 20000 and
  it still starts).
* No DNS and no internet inside the host, by design: packages come only from the local repo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SUITE = "bookworm"
MIRROR = os.environ.get("EMAILSERVICE_TESTHOST_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "EMAILSERVICE_TESTHOST_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
# Bump when the build below changes: every cached base and image is then rebuilt.
RECIPE_VERSION = 1
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "iproute2",
    "python3",
    "sudo",
    "ca-certificates",
    "procps",
)
REPO_MOUNT = "/srv/debian-cache"
DEFAULT_CACHE = "/var/cache/emailservice-testhost"
STATE_DIR = Path("/run/emailservice-testhost")
NETWORK = ipaddress.ip_network("10.231.0.0/16")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# What this machine needs: a command and the Debian package that provides it.
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "dpkg-scanpackages": "dpkg-dev",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "chroot": "coreutils",
}

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$")  # es-<name> fits IFNAMSIZ (15)
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9]+)?(?:=[A-Za-z0-9.+~:-]+)?$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ENV = {
    **os.environ,
    "PATH": os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin",
    "LC_ALL": "C.UTF-8",
}


class TestHostError(RuntimeError):
    """The test host could not be built, booted or reached; the message says why."""

    __test__ = False  # not a pytest test class


# --------------------------------------------------------------------------------------------
# Small helpers


def _say(message: str) -> None:
    print(f"testhost: {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(_ANSI.sub("", text).replace("\r", "").splitlines()[-lines:])


def _file_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _dies_with_us(sig: str, argv: list[str]) -> list[str]:
    """argv, getting signal sig when this process dies, even by SIGKILL (PR_SET_PDEATHSIG, set
    by setpriv and kept across exec): a killed test run leaves no build step or host running."""
    return ["setpriv", f"--pdeathsig={sig}", "--", *argv]


# Builds run in a private mount and PID namespace: their mounts vanish with them, and when
# unshare dies (it dies with us), --kill-child ends the namespace's init and so every process
# of the step, apt and maintainer scripts included.
_ISOLATED = _dies_with_us(
    "KILL", ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
)


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float | None = 600,
    cwd: Path | None = None,
    stdout: IO[str] | int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command on this machine; on failure raise with its output."""
    argv = [str(a) for a in argv]
    result = subprocess.run(
        argv,
        env=_ENV,
        cwd=cwd,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.PIPE,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        output = _tail((result.stdout or "") + (result.stderr or ""))
        raise TestHostError(f"{shlex.join(argv)} exited with {result.returncode}\n{output}")
    return result


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_ENV["PATH"])


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestHostError(
            "the deploy test host needs root (debootstrap, ip netns, systemd-nspawn)"
        )


@contextlib.contextmanager
def _flock(path: Path, what: str, shared: bool = False) -> Iterator[int]:
    """Hold an fcntl lock on path; say so if another run holds it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another run ({what}, lock {path})")
            fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            raw = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _remove_tree(path: Path) -> None:
    """rm -rf, but never through a mount (a build killed mid-chroot must not take /dev along)."""
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()).rstrip("/") + "/"
    for point in sorted(_mountpoints(), reverse=True):
        if (point + "/").startswith(prefix):
            _run(["umount", "--lazy", point], check=False)
    still = [p for p in _mountpoints() if (p + "/").startswith(prefix)]
    if still:
        raise TestHostError(f"refusing to remove {path}: still mounted inside: {still}")
    _run(["rm", "-rf", "--one-file-system", "--", path])


def _du(path: Path) -> int:
    result = _run(["du", "-sb", path], check=False)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


# --------------------------------------------------------------------------------------------
# Tools on this machine


def ensure_tools() -> None:
    """Install what this machine needs for a test host, when missing (quick no-op otherwise)."""
    missing = sorted({package for tool, package in TOOLS.items() if not _which(tool)})
    if not DEBIAN_KEYRING.exists():
        missing.append("debian-archive-keyring")
    if not missing:
        return
    _require_root()
    _say(f"installing {' '.join(missing)} on this machine")
    install = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=600",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        *missing,
    ]
    env = {**_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    first = subprocess.run(install, env=env, capture_output=True, text=True)
    if first.returncode != 0:  # stale or missing package lists: update once and retry
        subprocess.run(["apt-get", "-q", "update"], env=env, capture_output=True, text=True)
        second = subprocess.run(install, env=env, capture_output=True, text=True)
        if second.returncode != 0:
            raise TestHostError(
                f"could not install {' '.join(missing)}:\n{_tail(second.stdout + second.stderr)}"
            )
    still = [tool for tool in TOOLS if not _which(tool)]
    if still:
        raise TestHostError(f"still missing after installing {missing}: {still}")


# --------------------------------------------------------------------------------------------
# The image


@dataclass(frozen=True)
class Image:
    """A built image: `rootfs` to boot and `repo` of the deploy's .debs."""

    key: str
    path: Path
    packages: tuple[str, ...]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def repo(self) -> Path:
        return self.path / "repo"


def cache_dir() -> Path:
    return Path(os.environ.get("EMAILSERVICE_TESTHOST_CACHE", DEFAULT_CACHE))


def _normalise(packages: Sequence[str]) -> tuple[str, ...]:
    if isinstance(packages, str):
        raise TypeError("packages is a list of Debian package names, not a string")
    wanted = tuple(sorted(set(packages)))
    bad = [p for p in wanted if not _PACKAGE.match(p)]
    if bad:
        raise ValueError(f"not Debian package names: {bad}")
    return wanted


def _key(extra: dict) -> str:
    spec = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "security": SECURITY_MIRROR,
        "base": BASE_PACKAGES,
        **extra,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def image_key(packages: Sequence[str]) -> str:
    return _key({"packages": _normalise(packages)})


def _online_sources() -> str:
    return (
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
    )


# Runs as: _ISOLATED -- sh -c SCRIPT sh ROOT STEP [REPO]
# The mounts live in a private mount namespace: they vanish with it, even after a SIGKILL.
_CHROOT = r"""
set -eu
root=$1
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
[ -e "$root/etc/resolv.conf" ] || : > "$root/etc/resolv.conf"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
if [ -n "${3:-}" ]; then
    mount --bind "$3" "$root/srv/debian-cache"
    mount -o remount,bind,ro "$root/srv/debian-cache"
fi
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -euxc "
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        $2"
"""


def _chroot(
    rootfs: Path, step: str, log: IO[str], repo: Path | None = None, timeout: float = 1800
) -> None:
    """Run a shell step in the image, online, with no service allowed to start (policy-rc.d);
    with repo, that is mounted read-only at REPO_MOUNT."""
    log.write(f"\n### chroot: {step}\n")
    log.flush()
    argv = [*_ISOLATED, "--", "sh", "-c", _CHROOT, "sh", str(rootfs), step, str(repo or "")]
    result = _run(argv, check=False, stdout=log, timeout=timeout)
    if result.returncode != 0:
        log.flush()
        raise TestHostError(
            f"image build step failed ({result.returncode}): {step}\n{_file_tail(Path(log.name))}"
        )


def _build_base(target: Path, log: IO[str]) -> None:
    rootfs = target / "rootfs"
    log.write(f"### debootstrap --variant=minbase {SUITE} {rootfs} {MIRROR}\n")
    log.flush()
    result = _run(
        [*_ISOLATED, "--", "debootstrap", "--variant=minbase", SUITE, rootfs, MIRROR],
        check=False,
        stdout=log,
        timeout=1800,
    )
    if result.returncode != 0:
        raise TestHostError(f"debootstrap failed:\n{_file_tail(Path(log.name))}")
    (rootfs / "etc/apt/sources.list").write_text(_online_sources())
    for old in (rootfs / "etc/apt/sources.list.d").glob("*"):
        old.unlink()
    packages = " ".join(BASE_PACKAGES)
    _chroot(
        rootfs,
        "apt-get -q update && apt-get -q -y dist-upgrade"
        f" && apt-get -q -y install --no-install-recommends {packages}"
        " && apt-get clean && rm -rf /var/lib/apt/lists/*",
        log,
    )
    etc = rootfs / "etc"
    (etc / "machine-id").write_text("")  # systemd fills it at boot
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    for per_run in ("hostname", "hosts"):  # provided at boot, per host
        (etc / per_run).unlink(missing_ok=True)
    (etc / "resolv.conf").unlink(missing_ok=True)
    (etc / "resolv.conf").write_text(
        "# Deploy test host: no name server (offline network namespace).\n"
    )
    (etc / "default/locale").write_text("LANG=C.UTF-8\n")
    (rootfs / REPO_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / "usr/sbin/policy-rc.d").unlink(missing_ok=True)


def _build_image(base: Path, target: Path, packages: tuple[str, ...], log: IO[str]) -> int:
    rootfs, repo = target / "rootfs", target / "repo"
    _run(["cp", "-a", "--reflink=auto", base / "rootfs", rootfs])
    (rootfs / "etc/apt/sources.list").write_text(_online_sources())
    wanted = " ".join(shlex.quote(p) for p in packages)
    # Recommends included: the repo then serves the deploy with or without --no-install-recommends.
    _chroot(
        rootfs,
        f"apt-get -q update && apt-get -q -y install --download-only {wanted}" if wanted else ":",
        log,
    )
    repo.mkdir()
    debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
    for deb in debs:
        shutil.move(deb, repo / deb.name)
    index = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=repo,
        env=_ENV,
        capture_output=True,
        text=True,
    )
    entries = [e for e in index.stdout.split("\n\n") if e.strip()]
    if index.returncode != 0 or len(entries) != len(debs):
        raise TestHostError(
            f"dpkg-scanpackages indexed {len(entries)} of {len(debs)} .debs in {repo}:\n"
            f"{_tail(index.stderr)}"
        )
    (repo / "Packages").write_text(index.stdout)
    (rootfs / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{REPO_MOUNT} ./\n")
    # Prove it now: offline, the repo alone satisfies the packages, with or without Recommends.
    _chroot(
        rootfs,
        "apt-get clean && rm -rf /var/lib/apt/lists/* && apt-get -q update"
        + (
            f" && apt-get -q -s -y install --no-install-recommends {wanted}"
            f" && apt-get -q -s -y install {wanted}"
            if wanted
            else ""
        )
        + " && rm -rf /var/lib/apt/lists/* && apt-get clean",
        log,
        repo=repo,
    )
    return len(debs)


def _clean_tmp(cache: Path) -> None:
    """Remove what interrupted builds left (only called with the build lock held)."""
    for leftover in (cache / "tmp").glob("*"):
        _say(f"removing an interrupted build: {leftover}")
        _remove_tree(leftover)


def _ensure_base(cache: Path) -> Path:
    key = _key({})
    final = cache / "base" / key
    if (final / "manifest.json").exists():
        return final
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"base-{key}.", dir=cache / "tmp"))
    try:
        with open(tmp / "build.log", "w") as log:
            _build_base(tmp, log)
        (tmp / "manifest.json").write_text(
            json.dumps({"key": key, "recipe": RECIPE_VERSION, "base": BASE_PACKAGES}, indent=1)
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    for other in (cache / "base").iterdir():  # bases of older recipes
        if other.name != key:
            _remove_tree(other)
    took = time.monotonic() - started
    _say(f"base image {key} built in {took:.1f} s ({_mb(_du(final / 'rootfs'))})")
    return final


def _prune(cache: Path, keep: Path) -> None:
    """Remove least recently used images beyond KEEP_IMAGES, never one that is in use."""
    limit = int(os.environ.get("EMAILSERVICE_TESTHOST_KEEP", "3"))
    images = [p for p in (cache / "images").iterdir() if (p / "manifest.json").exists()]
    images.sort(key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)
    for rank, old in enumerate(images):
        if old == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            recipe = json.loads((old / "manifest.json").read_text()).get("recipe")
            if rank < limit and recipe == RECIPE_VERSION:
                continue
        fd = os.open(old / "inuse.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a host is booted from it right now
        else:
            trash = Path(tempfile.mkdtemp(prefix="trash.", dir=cache / "tmp"))
            os.rename(old, trash / "image")
            _remove_tree(trash)
            _say(f"removed the least recently used image {old.name}")
        finally:
            os.close(fd)


def ensure_image(packages: Sequence[str]) -> Image:
    """The cached image for this package list, built first if needed (needs root)."""
    wanted = _normalise(packages)
    key = image_key(wanted)
    cache = cache_dir()
    final = cache / "images" / key
    image = Image(key=key, path=final, packages=wanted)
    if (final / "manifest.json").exists():
        return image
    _require_root()
    for sub in ("tmp", "base", "images"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    with _flock(cache / "build.lock", "building a test host image"):
        if (final / "manifest.json").exists():  # built by the run we waited for
            return image
        _clean_tmp(cache)
        started = time.monotonic()
        base = _ensure_base(cache)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=cache / "tmp"))
        try:
            with open(tmp / "build.log", "w") as log:
                count = _build_image(base, tmp, wanted, log)
            manifest = {
                "key": key,
                "recipe": RECIPE_VERSION,
                "packages": wanted,
                "debs": count,
                "rootfs_bytes": _du(tmp / "rootfs"),
                "repo_bytes": _du(tmp / "repo"),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.rename(tmp, final)  # atomic: the image appears only when complete
        except BaseException:
            _remove_tree(tmp)
            raise
        took = time.monotonic() - started
        _say(
            f"image {key} built in {took:.1f} s: rootfs {_mb(manifest['rootfs_bytes'])}, "
            f"repo of {count} .debs {_mb(manifest['repo_bytes'])} ({' '.join(wanted)})"
        )
        _prune(cache, keep=final)
    return image


@contextlib.contextmanager
def _use_image(packages: Sequence[str]) -> Iterator[Image]:
    """ensure_image, holding the image's shared in-use lock (so pruning leaves it alone)."""
    for _ in range(3):
        image = ensure_image(packages)
        fd = os.open(image.path / "inuse.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if not (image.path / "manifest.json").exists():
                continue  # pruned between the check and the lock: build it again
            os.utime(image.path / "manifest.json")  # last used, for pruning
            yield image
            return
        finally:
            os.close(fd)
    raise TestHostError(f"image {image.key} keeps disappearing from {cache_dir()}")


# --------------------------------------------------------------------------------------------
# Network


def _netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _netns_pids(netns: str) -> list[int]:
    if not _netns_exists(netns):
        return []
    result = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill_netns(netns: str, timeout: float = 10) -> None:
    """SIGKILL every process left in the namespace (a container whose nspawn is gone)."""
    deadline = time.monotonic() + timeout
    while pids := _netns_pids(netns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TestHostError(f"processes in {netns} do not die: {pids}")
        time.sleep(0.1)


def _remove_network(netns: str, veth: str) -> None:
    """Remove the host's namespace and veth (and nspawn's per-machine dir, which an nspawn that
    was killed leaves behind; both are named es-<name>)."""
    _kill_netns(netns)
    if _link_exists(veth):
        _run(["ip", "link", "del", "dev", veth], check=False)
    if _netns_exists(netns):
        _run(["ip", "netns", "del", netns])
    with contextlib.suppress(OSError):  # only if empty
        Path("/run/systemd/nspawn/propagate", netns).rmdir()


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    addrs = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dst, strict=False))
    return used


def _free_slot(name: str) -> ipaddress.IPv4Network:
    """The first /30 of NETWORK free on this machine, starting at a hash of the name."""
    slots = NETWORK.num_addresses // 4 - 1  # slot 0 (10.231.0.0/30) is never used
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % slots
    used = _networks_in_use()
    for i in range(slots):
        index = (start + i) % slots + 1
        subnet = ipaddress.ip_network(f"{NETWORK.network_address + 4 * index}/30")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise TestHostError(f"no free /30 left in {NETWORK}")


# --------------------------------------------------------------------------------------------
# Records of running hosts, to tear down those whose test run died


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _record_path(name: str) -> Path:
    return STATE_DIR / "hosts" / f"{name}.json"


def _owner_alive(record: dict) -> bool:
    return _process_start(record["owner_pid"]) == record["owner_start"]


def _teardown_record(record: dict) -> None:
    """Tear down what a dead run left: its nspawn, namespace, veth and run dir."""
    pid = record.get("nspawn_pid")
    if pid and _process_start(pid) == record.get("nspawn_start"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _remove_network(record["netns"], record["veth"])
    rundir = Path(record["rundir"])
    if rundir.is_dir() and rundir.name.startswith("emailservice-testhost-"):
        _remove_tree(rundir)


def _sweep_orphans() -> None:
    for path in sorted((STATE_DIR / "hosts").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _owner_alive(record):
            continue
        _say(f"tearing down {record['name']}, left running by a test run that died")
        _teardown_record(record)
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The host


class TestHost:
    """A booted Debian host reached over SSH as root. Made by boot_test_host()."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, image: Image, hostname: str | None = None) -> None:
        if not _NAME.match(name):
            raise ValueError(f"name must match {_NAME.pattern} (it names a veth): {name!r}")
        self.name = name
        self.hostname = hostname or f"testhost-{name}"
        self.image = image
        self.netns = f"es-{name}"
        self.veth = f"es-{name}"  # host side; the host's side is eth0 inside the namespace
        self.machine = f"es-{name}"
        self.address = ""
        self.gateway = ""
        self.ssh_user = "root"
        self.ssh_options = [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "ConnectTimeout=10",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ]
        self.rundir = Path(tempfile.mkdtemp(prefix=f"emailservice-testhost-{name}-"))
        self.ssh_key = self.rundir / "id_ed25519"
        self.console = self.rundir / "console.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._record: dict = {}
        self._stopped = False
        self._claimed = False
        self.exit_status: int | None = None  # systemd-nspawn's, once stopped (0: clean power-off)

    def __repr__(self) -> str:
        return f"<TestHost {self.name} {self.address or '(not booted)'}>"

    # ---- reaching it

    def ssh_args(self, connect_timeout: float | None = None) -> list[str]:
        """ssh's arguments before the command: no user config, the run's key, the options."""
        args = ["-F", "/dev/null", "-i", str(self.ssh_key)]
        for option in self.ssh_options:
            if connect_timeout is not None and option.startswith("ConnectTimeout="):
                option = f"ConnectTimeout={max(1, round(connect_timeout))}"
            args += ["-o", option]
        return args

    def ssh_command(self, command: str, connect_timeout: float | None = None) -> list[str]:
        """The full ssh argv that runs command (a shell string) on the host."""
        return ["ssh", *self.ssh_args(connect_timeout), f"{self.ssh_user}@{self.address}", command]

    def run(
        self,
        command: str,
        *,
        check: bool = False,
        timeout: float | None = 600,
        input: str | None = None,
        connect_timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over SSH (ssh itself failing gives returncode 255)."""
        result = subprocess.run(
            self.ssh_command(command, connect_timeout),
            env=_ENV,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise TestHostError(
                f"on {self.name}: {command!r} exited with {result.returncode}\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        return result

    def pyinfra_host_data(self) -> dict:
        """Host data for pyinfra's SSH connector: `(host.address, host.pyinfra_host_data())`."""
        return {
            "ssh_user": self.ssh_user,
            "ssh_key": str(self.ssh_key),
            "ssh_strict_host_key_checking": "no",
            "ssh_known_hosts_file": "/dev/null",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }

    def journal(self, unit: str, lines: int = 200) -> str:
        """The unit's last journal lines."""
        cmd = f"journalctl -u {shlex.quote(unit)} --no-pager -n {int(lines)}"
        result = self.run(cmd, timeout=60)
        return result.stdout + result.stderr

    def wait_for_unit(self, unit: str, timeout: float = 60) -> None:
        """Wait until the unit is active; raise with its journal if it fails or times out."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run(f"systemctl is-active {shlex.quote(unit)}", timeout=30).stdout
            state = state.strip()
            if state == "active":
                return
            if state == "failed":
                break
            time.sleep(0.3)
        raise TestHostError(f"{unit} on {self.name} is {state or 'unknown'}:\n{self.journal(unit)}")

    def console_log(self, lines: int = 40) -> str:
        """The tail of the container's console (systemd's boot messages)."""
        return _file_tail(self.console, lines)

    # ---- life cycle

    def _save_record(self) -> None:
        path = _record_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._record))

    def _claim_name(self) -> None:
        path = _record_path(self.name)
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
                if _owner_alive(record):
                    raise TestHostError(
                        f"a test host named {self.name} is already running "
                        f"(test run pid {record['owner_pid']})"
                    )
                _teardown_record(record)
        if _netns_exists(self.netns) or _link_exists(self.veth):
            _say(f"removing a stale namespace/veth {self.netns} of an earlier run")
            _remove_network(self.netns, self.veth)
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

    def _setup_network(self) -> None:
        with _flock(STATE_DIR / "net.lock", "choosing a test host address"):
            subnet = _free_slot(self.name)
            self.gateway = str(subnet.network_address + 1)
            self.address = str(subnet.network_address + 2)
            _run(["ip", "netns", "add", self.netns])
            # The host's side is made inside the namespace directly, as eth0.
            _run(
                ["ip", "link", "add", self.veth, "type", "veth"]
                + ["peer", "name", "eth0", "netns", self.netns]
            )
            _run(["ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth])
        _run(["ip", "link", "set", self.veth, "up"])
        inside = ["ip", "-n", self.netns]
        _run([*inside, "addr", "add", f"{self.address}/30", "dev", "eth0"])
        _run([*inside, "link", "set", "eth0", "up"])
        _run([*inside, "link", "set", "lo", "up"])

    def _start(self, boot_timeout: float) -> None:
        started = time.monotonic()
        self._claim_name()
        _run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.machine]
            + ["-f", self.ssh_key]
        )
        self.ssh_key.chmod(0o600)
        keys = self.rundir / "authorized_keys"
        keys.write_text(self.ssh_key.with_suffix(".pub").read_text())
        keys.chmod(0o600)
        short = self.hostname.split(".")[0]
        names = self.hostname if short == self.hostname else f"{self.hostname} {short}"
        hosts = self.rundir / "hosts"
        hosts.write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
            "ff02::2\tip6-allrouters\n"
        )
        self._setup_network()
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
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
        ]
        with open(self.console, "wb") as console:
            self._process = subprocess.Popen(
                _dies_with_us("TERM", argv),  # a killed test run: clean power-off
                # /proc/sys/net writable (the host's own namespace), the rest of /proc/sys not.
                env={**_ENV, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
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
        _say(
            f"{self.machine} booted in {time.monotonic() - started:.1f} s at {self.address} "
            f"(image {self.image.key})"
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
                    _say(f"{self.machine} is degraded; failed units:\n{failed.stdout.strip()}")
                return
            if state in ("initializing", "starting"):
                time.sleep(0.2)
                continue
            raise TestHostError(
                f"{self.machine} reached state {state!r}. Console:\n{self.console_log()}"
            )

    def stop(self, stop_timeout: float = 30) -> None:
        """Power off (SIGTERM to nspawn), SIGKILL after stop_timeout, remove veth, namespace and
        run dir. Safe to call twice and after a failed boot."""
        if self._stopped:
            return
        started = time.monotonic()
        errors: list[str] = []
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                errors.append(f"{self.machine} did not power off in {stop_timeout} s: killed")
                process.kill()
                process.wait(30)
        steps = [lambda: _remove_tree(self.rundir)]
        if self._claimed:  # never another live host's namespace of the same name
            steps.append(lambda: _remove_network(self.netns, self.veth))
            steps.append(lambda: _record_path(self.name).unlink(missing_ok=True))
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
        _say(f"{self.machine} torn down in {time.monotonic() - started:.1f} s ({how})")
        if errors:
            raise TestHostError(f"tearing down {self.machine}: " + "; ".join(errors))


@contextlib.contextmanager
def boot_test_host(
    name: str,
    packages: Sequence[str],
    *,
    hostname: str | None = None,
    boot_timeout: float = 180,
) -> Iterator[TestHost]:
    """Boot a fresh Debian 12 host whose apt offers `packages` offline; power it off on exit.

    name: short unique id ([a-z0-9-], up to 12 characters), e.g. a few hex digits.
    hostname: the host's name (default testhost-<name>); with a dot it is also an FQDN.
    """
    if not _NAME.match(name):
        raise ValueError(f"name must match {_NAME.pattern} (it names a veth): {name!r}")
    _require_root()
    ensure_tools()
    _sweep_orphans()
    with _use_image(packages) as image:
        host = TestHost(name, image, hostname)
        try:
            host._start(boot_timeout)
            yield host
        finally:
            host.stop()


@contextlib.contextmanager
def private_link(a: TestHost, b: TestHost) -> Iterator[tuple[str, str]]:
    """A private network between two booted hosts, like a provider's private LAN; yields the
    private addresses of a and b.

    A veth pair joins their namespaces directly (eth1 on each, a /30 of its own, chosen like a
    host's slot under the same lock). This machine is not on it, but has a route to b's private
    address through b: it reaches b there as any outsider on that network would, which is how a
    test shows that b's firewall lets in a and nobody else. The route (which also marks the /30
    as taken for other runs) is removed on exit, after both hosts are told to power off at once:
    the link goes with the first namespace removed, and a host that loses it while still up was
    seen hanging in its power-off for more than 30 s.
    """
    with _flock(STATE_DIR / "net.lock", "choosing a private network"):
        subnet = _free_slot(f"{a.name}+{b.name}")
        first, second = str(subnet.network_address + 1), str(subnet.network_address + 2)
        _run(
            ["ip", "-n", a.netns, "link", "add", "eth1", "type", "veth"]
            + ["peer", "name", "eth1", "netns", b.netns]
        )
        _run(["ip", "route", "add", f"{second}/32", "via", b.address])
    try:
        for netns, address in ((a.netns, first), (b.netns, second)):
            _run(["ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "eth1"])
            _run(["ip", "-n", netns, "link", "set", "eth1", "up"])
        _say(f"private link {a.machine} {first} <-> {b.machine} {second}")
        yield first, second
    finally:
        for host in (a, b):
            if host._process is not None and host._process.poll() is None:
                host._process.send_signal(signal.SIGTERM)  # stop() then waits for each
        _run(["ip", "route", "del", f"{second}/32"], check=False)


def _main(argv: list[str]) -> int:
    """python -m tests.deploy.testhost build|shell PACKAGE... (by hand: build, or boot and wait)."""
    if len(argv) < 1 or argv[0] not in ("build", "shell"):
        print(_main.__doc__, file=sys.stderr)
        return 2
    ensure_tools()
    if argv[0] == "build":
        image = ensure_image(argv[1:])
        print((image.path / "manifest.json").read_text())
        return 0
    with boot_test_host(f"sh{os.getpid() % 100000}", argv[1:]) as host:
        print(f"ssh {shlex.join(host.ssh_args())} root@{host.address}")
        with contextlib.suppress(KeyboardInterrupt):
            input("Enter (or Ctrl-C) powers it off. ")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
