"""This machine's side of a test host: running commands, locks, removing trees, needed tools.

Everything here runs on the machine that boots the hosts (as root), never inside a host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

# Records of running hosts and the network lock: cleared at reboot, like the hosts themselves.
STATE_DIR = Path("/run/emailservice-testhost")
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
    # A local ACME CA for the certificate tests (tests/deploy/acme.py).
    "pebble": "pebble",
    "pebble-challtestsrv": "pebble",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ENV = {
    **os.environ,
    "PATH": os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin",
    "LC_ALL": "C.UTF-8",
}


class TestHostError(RuntimeError):
    """The test host could not be built, booted or reached; the message says why."""

    __test__ = False  # not a pytest test class


def say(message: str) -> None:
    print(f"testhost: {message}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(_ANSI.sub("", text).replace("\r", "").splitlines()[-lines:])


def file_tail(path: Path, lines: int = 40) -> str:
    try:
        return tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def dies_with_us(sig: str, argv: list[str]) -> list[str]:
    """argv, getting signal sig when this process dies, even by SIGKILL (PR_SET_PDEATHSIG, set
    by setpriv and kept across exec): a killed test run leaves no build step or host running."""
    return ["setpriv", f"--pdeathsig={sig}", "--", *argv]


def run(
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
        env=ENV,
        cwd=cwd,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.PIPE,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        output = tail((result.stdout or "") + (result.stderr or ""))
        raise TestHostError(f"{shlex.join(argv)} exited with {result.returncode}\n{output}")
    return result


def which(tool: str) -> str | None:
    return shutil.which(tool, path=ENV["PATH"])


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestHostError(
            "the deploy test host needs root (debootstrap, ip netns, systemd-nspawn)"
        )


@contextlib.contextmanager
def flock(path: Path, what: str, shared: bool = False) -> Iterator[int]:
    """Hold an fcntl lock on path; say so if another run holds it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another run ({what}, lock {path})")
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


def remove_tree(path: Path) -> None:
    """rm -rf, but never through a mount (a build killed mid-chroot must not take /dev along)."""
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()).rstrip("/") + "/"
    for point in sorted(_mountpoints(), reverse=True):
        if (point + "/").startswith(prefix):
            run(["umount", "--lazy", point], check=False)
    still = [p for p in _mountpoints() if (p + "/").startswith(prefix)]
    if still:
        raise TestHostError(f"refusing to remove {path}: still mounted inside: {still}")
    run(["rm", "-rf", "--one-file-system", "--", path])


def ensure_tools() -> None:
    """Install what this machine needs for a test host, when missing (quick no-op otherwise)."""
    missing = sorted({package for tool, package in TOOLS.items() if not which(tool)})
    if not DEBIAN_KEYRING.exists():
        missing.append("debian-archive-keyring")
    if not missing:
        return
    require_root()
    say(f"installing {' '.join(missing)} on this machine")
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
    env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
    first = subprocess.run(install, env=env, capture_output=True, text=True)
    if first.returncode != 0:  # stale or missing package lists: update once and retry
        subprocess.run(["apt-get", "-q", "update"], env=env, capture_output=True, text=True)
        second = subprocess.run(install, env=env, capture_output=True, text=True)
        if second.returncode != 0:
            raise TestHostError(
                f"could not install {' '.join(missing)}:\n{tail(second.stdout + second.stderr)}"
            )
    still = [tool for tool in TOOLS if not which(tool)]
    if still:
        raise TestHostError(f"still missing after installing {missing}: {still}")
