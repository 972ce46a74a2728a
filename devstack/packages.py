"""Check that the server binaries are installed; install the missing Debian packages when root."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.errors import StackError
from devstack.proc import SBIN_PATH, base_env, one_line

DEBCONF = (
    "postfix postfix/main_mailer_type select Local only\n"
    "postfix postfix/mailname string localhost\n"
)
APT_OPTS = ["-y", "--no-install-recommends"]


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, pg_ctl and postgres."""
    found = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        if all(
            os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")
        ):
            version = Path(bindir).parent.name
            found.append((int(version) if version.isdigit() else 0, bindir))
    return Path(max(found)[1]) if found else None


def _which(name: str) -> bool:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SBIN_PATH) is not None


def _present(*paths: str) -> bool:
    return all(os.access(p, os.X_OK) for p in paths)


# Tools the test suite drives besides the servers: headless Chromium loads /docs; Vagrant
# validates the Vagrantfile (no hypervisor needed for that).
TEST_TOOLS = {"chromium": "chromium", "vagrant": "vagrant"}
# The benchmarks' comparators (bench/): mbsync (isync) and wrk; smtp-source comes with postfix.
BENCH_TOOLS = {"isync": "mbsync", "wrk": "wrk"}


def missing(
    postgres: bool = True, redis: bool = True, test_tools: bool = False, bench_tools: bool = False
) -> list[str]:
    """The Debian packages whose binaries are not installed."""
    checks = {
        "postgresql": (lambda: postgres_bindir() is not None) if postgres else None,
        "redis-server": (lambda: _which("redis-server")) if redis else None,
        "postfix": lambda: _which("postfix") and _present("/usr/lib/postfix/sbin/master"),
        # Debian puts the protocol binaries in /usr/lib/dovecot; doveadm comes with dovecot-core.
        "dovecot-imapd": lambda: (
            _which("dovecot") and _which("doveadm") and _present("/usr/lib/dovecot/imap")
        ),
        "dovecot-lmtpd": lambda: _present("/usr/lib/dovecot/lmtp"),
        "openssl": lambda: _which("openssl"),
    }
    if test_tools:
        for package, binary in TEST_TOOLS.items():
            checks[package] = lambda binary=binary: _which(binary)
    if bench_tools:
        for package, binary in BENCH_TOOLS.items():
            checks[package] = lambda binary=binary: _which(binary)
    return [package for package, check in checks.items() if check is not None and not check()]


def install_line(packages: list[str]) -> str:
    """The one command a non-root user has to run."""
    return "sudo apt-get install " + " ".join(APT_OPTS + packages)


def ensure(
    postgres: bool = True, redis: bool = True, test_tools: bool = False, bench_tools: bool = False
) -> None:
    """Make sure the binaries are there: quick if so, apt-get install as root, else raise."""
    needed = missing(postgres=postgres, redis=redis, test_tools=test_tools, bench_tools=bench_tools)
    if not needed:
        return
    if os.geteuid() != 0:
        raise StackError(
            f"missing packages {', '.join(needed)}; install them with: {install_line(needed)}"
        )
    _apt_install(needed)
    still = missing(postgres=postgres, redis=redis, test_tools=test_tools, bench_tools=bench_tools)
    if still:
        raise StackError(
            f"packages {', '.join(still)} installed but their binaries are still missing"
        )


def _apt(args: list[str], log: Path) -> int:
    env = base_env({"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"})
    with open(log, "ab") as out:
        return subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        ).returncode


def _apt_install(packages: list[str]) -> None:
    """Preseed postfix's questions, then install; refresh the package lists only when needed."""
    print(f"devstack: installing {' '.join(packages)} ...", file=sys.stderr, flush=True)
    subprocess.run(
        ["debconf-set-selections"],
        input=DEBCONF,
        text=True,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=base_env(),
    )
    fd, name = tempfile.mkstemp(prefix="devstack-apt-", suffix=".log")
    os.close(fd)
    log = Path(name)
    command = ["apt-get", "install", *APT_OPTS, *packages]
    if _apt(command, log) != 0:
        # Fresh machines (and containers) often have no package lists yet.
        if _apt(["apt-get", "update"], log) != 0 or _apt(command, log) != 0:
            text = log.read_text(errors="replace").splitlines()[-12:]
            raise StackError(
                f"`{' '.join(command)}` failed (full log {log}): {one_line(chr(10).join(text))}"
            )
    log.unlink(missing_ok=True)
