"""Small process helpers: run a command, check or end a pid, wait for a server to answer."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devstack.errors import StackError

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for daemons: a PATH with the sbin directories and C messages."""
    env = {"PATH": SBIN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/"}
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    *,
    what: str,
    user: str | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command without stdin, output in `.stdout`; raise StackError if it fails.

    Output goes to a file, never a pipe: a daemon that forks keeps the descriptors it inherited,
    and a pipe would stay open (its reader hanging) until the daemon exits. Commands that start
    daemons pass `log`, a file in the state dir, so whatever the daemon prints later lands there.
    """
    kwargs: dict = {}
    if user is not None and os.geteuid() == 0:
        # extra_groups=[] drops root's supplementary groups, like runuser does.
        kwargs.update(user=user, group=_primary_group(user), extra_groups=[])
    with open(log, "ab+") if log is not None else tempfile.TemporaryFile() as out:
        start = out.seek(0, os.SEEK_END)
        try:
            returncode = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(cwd) if cwd else None,
                env=dict(env) if env is not None else base_env(),
                timeout=timeout,
                **kwargs,
            ).returncode
        except FileNotFoundError as exc:
            raise StackError(f"{what}: {cmd[0]} not found ({exc.strerror})") from None
        except subprocess.TimeoutExpired:
            raise StackError(
                f"{what}: `{' '.join(cmd)}` did not finish within {timeout:.0f} s"
            ) from None
        out.seek(start)
        output = out.read().decode("utf-8", "replace")
    proc = subprocess.CompletedProcess(list(cmd), returncode, output, "")
    if check and proc.returncode != 0:
        raise StackError(f"{what} failed (exit {returncode}): {one_line(output) or 'no output'}")
    return proc


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def one_line(text: str, limit: int = 1500) -> str:
    """Collapse output to one line (error messages must be a single line), keeping the end."""
    flat = " | ".join(line.strip() for line in text.replace("\r", "").splitlines() if line.strip())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def tail(path: str | Path, lines: int = 15) -> str:
    """The last lines of a log file, flattened to one line, or a note that there is none."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    return f"log {path}: " + one_line("\n".join(text.splitlines()[-lines:]))


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie (orphans may never be reaped here)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def running_in(pid: int | None, directory: Path) -> bool:
    """True when `pid` is alive and its working directory is `directory`.

    Our daemons all chdir into their own directory of the state dir; checking it keeps a stale
    pid file (after a reboot, the pid belongs to someone else) from naming an unrelated process.
    """
    if not pid_alive(pid):
        return False
    try:
        return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(directory)
    except PermissionError:
        return True
    except OSError:
        return False


def read_pidfile(path: str | Path) -> int | None:
    """The pid in the first line of a pid file (Postfix pads it with spaces), or None."""
    try:
        first = Path(path).read_text().strip().splitlines()[0]
        return int(first.strip())
    except (OSError, ValueError, IndexError):
        return None


def kill(pid: int | None, timeout: float = 10.0) -> None:
    """SIGTERM a process, then SIGKILL it when it is still there after `timeout` seconds."""
    if not pid_alive(pid):
        return
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(lambda: not pid_alive(pid), wait):
            return
    raise StackError(f"process {pid} did not exit after SIGKILL")


def children(pid: int) -> list[int]:
    """The pids of the direct children of `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop_tree(
    pid: int | None, stop: Callable[[], object] | None = None, timeout: float = 10
) -> None:
    """End a daemon (by `stop()`, else SIGTERM) and make sure its children are gone too.

    Dovecot's and Postfix's workers outlive their master for a moment (they notice it is gone
    only later): waiting for them means a stopped stack really has no process left.
    """
    if not pid_alive(pid):
        return
    assert pid is not None
    workers = children(pid)
    if stop is not None:
        stop()
        wait_until(lambda: not pid_alive(pid), timeout)
    kill(pid, timeout)
    if not wait_until(lambda: not any(pid_alive(w) for w in workers), 3):
        for worker in workers:
            kill(worker, 0.5)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds have passed; return its last result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def greets(
    port: int, prefix: bytes, *, tls: ssl.SSLContext | None = None, timeout: float = 2.0
) -> bool:
    """True when a server on 127.0.0.1:port sends a first line starting with `prefix`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
            with sock:
                return sock.recv(512).startswith(prefix)
    except (OSError, ssl.SSLError):
        return False


def accepts(port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
