"""The test host's image: a cached Debian root filesystem and a local apt repository, for a
release of RELEASES (Debian 13 "trixie" or Debian 12 "bookworm").

* Cache outside the clone: /var/cache/emailservice-testhost (env EMAILSERVICE_TESTHOST_CACHE).
  `base/<key>/rootfs`: `debootstrap --variant=minbase <release>` from http://deb.debian.org/debian
  (the mirror this machine's own /etc/apt/sources.list.d/debian.sources uses; env
  EMAILSERVICE_TESTHOST_MIRROR), then, in a chroot, dist-upgrade against <release>,
  <release>-updates and <release>-security and `apt-get install --no-install-recommends` of
  BASE_PACKAGES (systemd, systemd-sysv, dbus, libpam-systemd, openssh-server, iproute2, python3,
  sudo, ca-certificates, procps). No `locales`: LANG=C.UTF-8 is built into glibc, and our ssh
  runs with `-F /dev/null` so no client LANG is forwarded. The base depends only on the recipe,
  so a changed package list does not repeat debootstrap.
* Debian 13 from this Debian 12 machine needs nothing newer: Debian 12's debootstrap
  (1.0.128+nmu2+deb12u2) has a `trixie` script (a link to `sid`, like `bookworm`'s) and Debian
  12's debian-archive-keyring (2023.3+deb12u2) holds trixie's archive, security and release
  keys, so `debootstrap trixie` verifies the Release file as it does bookworm's. Debian 13 is
  merged-/usr, which that debootstrap sets up by default; its apt still reads a one-line
  /etc/apt/sources.list (the deb822 debian.sources is only its installer's default).
* `images/<key>/`: a copy of the base (`cp -a --reflink=auto`) in which, with the chroot still
  online, `apt-get install --download-only <packages>` resolves the deploy's packages against this
  exact system (Recommends included, so the deploy may install with or without them). The .debs
  go to `images/<key>/repo/`, indexed with `dpkg-scanpackages`; the image's only apt source
  becomes `deb [trusted=yes] file:/srv/debian-cache ./`, and the repo is bind-mounted read-only
  there at boot. A flat repo without a Release file is fine for apt with `trusted=yes`. The
  deploy's packages are NOT installed in the image, apt's lists are empty (the deploy must
  `apt-get update`, as on any fresh host), and there is no policy-rc.d (handling service starts
  during installs is the deploy's job).
* <key> is a hash of (RECIPE_VERSION, release, mirrors, base packages, sorted package list):
  each release has its own base and images, side by side in the same cache.
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
  links to it), no /etc/hostname and no /etc/hosts (both are per run: see boot.py), an
  /etc/resolv.conf without servers (the host is offline: lookups fail at once instead of timing
  out), sshd's host keys from the build (clients here do not check them), LANG=C.UTF-8.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.deploy.testhost.machine import (
    ENV,
    TestHostError,
    dies_with_us,
    file_tail,
    flock,
    remove_tree,
    require_root,
    run,
    say,
    tail,
)

# The Debian releases a test host can run (docs/deploy.md: both are supported).
RELEASES = ("trixie", "bookworm")
DEFAULT_RELEASE = "trixie"
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
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9]+)?(?:=[A-Za-z0-9.+~:-]+)?$")
# Builds run in a private mount and PID namespace: their mounts vanish with them, and when
# unshare dies (it dies with us), --kill-child ends the namespace's init and so every process
# of the step, apt and maintainer scripts included.
_ISOLATED = dies_with_us(
    "KILL", ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
)


def _du(path: Path) -> int:
    result = run(["du", "-sb", path], check=False)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


@dataclass(frozen=True)
class Image:
    """A built image of a Debian release: `rootfs` to boot and `repo` of the deploy's .debs."""

    key: str
    path: Path
    packages: tuple[str, ...]
    release: str = DEFAULT_RELEASE

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


def _release(release: str) -> str:
    if release not in RELEASES:
        supported = ", ".join(RELEASES)
        raise ValueError(f"not a release the test host supports ({supported}): {release!r}")
    return release


def _key(release: str, extra: dict) -> str:
    spec = {
        "recipe": RECIPE_VERSION,
        "suite": _release(release),
        "mirror": MIRROR,
        "security": SECURITY_MIRROR,
        "base": BASE_PACKAGES,
        **extra,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def image_key(packages: Sequence[str], release: str = DEFAULT_RELEASE) -> str:
    return _key(release, {"packages": _normalise(packages)})


def _online_sources(release: str) -> str:
    return (
        f"deb {MIRROR} {release} main\n"
        f"deb {MIRROR} {release}-updates main\n"
        f"deb {SECURITY_MIRROR} {release}-security main\n"
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
    result = run(argv, check=False, stdout=log, timeout=timeout)
    if result.returncode != 0:
        log.flush()
        raise TestHostError(
            f"image build step failed ({result.returncode}): {step}\n{file_tail(Path(log.name))}"
        )


def _build_base(target: Path, release: str, log: IO[str]) -> None:
    rootfs = target / "rootfs"
    log.write(f"### debootstrap --variant=minbase {release} {rootfs} {MIRROR}\n")
    log.flush()
    result = run(
        [*_ISOLATED, "--", "debootstrap", "--variant=minbase", release, rootfs, MIRROR],
        check=False,
        stdout=log,
        timeout=1800,
    )
    if result.returncode != 0:
        raise TestHostError(f"debootstrap failed:\n{file_tail(Path(log.name))}")
    (rootfs / "etc/apt/sources.list").write_text(_online_sources(release))
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


def _build_image(
    base: Path, target: Path, release: str, packages: tuple[str, ...], log: IO[str]
) -> int:
    rootfs, repo = target / "rootfs", target / "repo"
    run(["cp", "-a", "--reflink=auto", base / "rootfs", rootfs])
    (rootfs / "etc/apt/sources.list").write_text(_online_sources(release))
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
        env=ENV,
        capture_output=True,
        text=True,
    )
    entries = [e for e in index.stdout.split("\n\n") if e.strip()]
    if index.returncode != 0 or len(entries) != len(debs):
        raise TestHostError(
            f"dpkg-scanpackages indexed {len(entries)} of {len(debs)} .debs in {repo}:\n"
            f"{tail(index.stderr)}"
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
        say(f"removing an interrupted build: {leftover}")
        remove_tree(leftover)


def _ensure_base(cache: Path, release: str) -> Path:
    key = _key(release, {})
    final = cache / "base" / key
    if (final / "manifest.json").exists():
        return final
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"base-{key}.", dir=cache / "tmp"))
    try:
        with open(tmp / "build.log", "w") as log:
            _build_base(tmp, release, log)
        manifest = {"key": key, "recipe": RECIPE_VERSION, "release": release, "base": BASE_PACKAGES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    for other in (cache / "base").iterdir():  # bases of older recipes (not other releases')
        if other.name != key and not _current_recipe(other):
            remove_tree(other)
    took = time.monotonic() - started
    say(f"{release} base image {key} built in {took:.1f} s ({_mb(_du(final / 'rootfs'))})")
    return final


def _built_release(built: Path) -> str | None:
    """The release a base or image was built for, None if by an older RECIPE_VERSION."""
    try:
        manifest = json.loads((built / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    release = manifest.get("release", "bookworm")  # the first recipes built only bookworm
    return release if manifest.get("recipe") == RECIPE_VERSION and release in RELEASES else None


def _current_recipe(built: Path) -> bool:
    return _built_release(built) is not None


def _prune(cache: Path, keep: Path) -> None:
    """Remove each release's least recently used images beyond EMAILSERVICE_TESTHOST_KEEP, and
    those of older recipes, never one that is in use."""
    limit = int(os.environ.get("EMAILSERVICE_TESTHOST_KEEP", "3"))
    images = [p for p in (cache / "images").iterdir() if (p / "manifest.json").exists()]
    images.sort(key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)
    ranks: dict[str | None, int] = {}
    for old in images:
        release = _built_release(old)
        rank = ranks[release] = ranks.get(release, -1) + 1
        if old == keep:
            continue
        if rank < limit and release is not None:
            continue
        fd = os.open(old / "inuse.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a host is booted from it right now
        else:
            trash = Path(tempfile.mkdtemp(prefix="trash.", dir=cache / "tmp"))
            os.rename(old, trash / "image")
            remove_tree(trash)
            say(f"removed the least recently used image {old.name}")
        finally:
            os.close(fd)


def ensure_image(packages: Sequence[str], release: str = DEFAULT_RELEASE) -> Image:
    """The cached image of this release for this package list, built first if needed (needs
    root)."""
    wanted = _normalise(packages)
    key = image_key(wanted, release)
    cache = cache_dir()
    final = cache / "images" / key
    image = Image(key=key, path=final, packages=wanted, release=release)
    if (final / "manifest.json").exists():
        return image
    require_root()
    for sub in ("tmp", "base", "images"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    with flock(cache / "build.lock", "building a test host image"):
        if (final / "manifest.json").exists():  # built by the run we waited for
            return image
        _clean_tmp(cache)
        started = time.monotonic()
        base = _ensure_base(cache, release)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=cache / "tmp"))
        try:
            with open(tmp / "build.log", "w") as log:
                count = _build_image(base, tmp, release, wanted, log)
            manifest = {
                "key": key,
                "recipe": RECIPE_VERSION,
                "release": release,
                "packages": wanted,
                "debs": count,
                "rootfs_bytes": _du(tmp / "rootfs"),
                "repo_bytes": _du(tmp / "repo"),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.rename(tmp, final)  # atomic: the image appears only when complete
        except BaseException:
            remove_tree(tmp)
            raise
        took = time.monotonic() - started
        say(
            f"{release} image {key} built in {took:.1f} s: rootfs {_mb(manifest['rootfs_bytes'])}, "
            f"repo of {count} .debs {_mb(manifest['repo_bytes'])} ({' '.join(wanted)})"
        )
        _prune(cache, keep=final)
    return image


@contextlib.contextmanager
def use_image(packages: Sequence[str], release: str = DEFAULT_RELEASE) -> Iterator[Image]:
    """ensure_image, holding the image's shared in-use lock (so pruning leaves it alone)."""
    for _ in range(3):
        image = ensure_image(packages, release)
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
