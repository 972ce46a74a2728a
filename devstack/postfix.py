"""The stack's own Postfix instance: MX-like smtp, submission and submissions."""

from __future__ import annotations

import os
import shlex
import shutil
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from devstack import templates
from devstack.errors import StackError
from devstack.proc import (
    greets,
    one_line,
    read_pidfile,
    run,
    running_in,
    stop_tree,
    tail,
    wait_until,
)


@dataclass
class PostfixPorts:
    """The loopback ports one Postfix instance listens on, and the Dovecot ports it uses."""

    smtp: int
    submission: int
    submissions: int
    lmtp: int
    auth: int


def variables(
    *, state: Path, ports: PostfixPorts, cert: Path, key: Path, mail_domain: str
) -> dict[str, object]:
    """What main.cf and master.cf are rendered with for a stack (on a host: tasks/postfix.py)."""
    return {
        "devstack": True,
        "state_dir": str(state),
        "config_dir": str(state / "postfix" / "etc"),
        "mail_hostname": f"mail.{mail_domain}",
        "mail_domain": mail_domain,
        # Every client is on loopback, so mynetworks must grant nothing; relay is for SASL users
        # only (tests check that port 25 refuses to relay).
        "mynetworks": "127.255.255.255/32",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "smtp_listen": f"127.0.0.1:{ports.smtp}",
        "submission_listen": f"127.0.0.1:{ports.submission}",
        "submissions_listen": f"127.0.0.1:{ports.submissions}",
        # The stack's queue directory is no chroot jail (Debian's init script fills a host's).
        "chroot": "n",
        # Users may be of any domain (Stack.add_user): the domains map lists theirs.
        "mailbox_domains": f"texthash:{state}/postfix/etc/domains",
        # The stack's Dovecot listens for these on loopback ports (templates/dovecot/).
        "dovecot_lmtp": f"inet:127.0.0.1:{ports.lmtp}",
        "dovecot_auth": f"inet:127.0.0.1:{ports.auth}",
        "tls_cert": str(cert),
        "tls_key": str(key),
        # Nothing leaves the stack, so nothing is signed, and no domain has a route of its own.
        "dkim_signing_port": None,
        "dkim_milter": None,
        "transports": None,
    }


def write_maps(state: Path, users: dict[str, str]) -> None:
    """The texthash maps: mailboxes, the owners of sender addresses, and the users' domains."""
    etc = state / "postfix" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    emails = sorted(e.lower() for e in users)
    values = {
        "mail_users": emails,
        # Unlike a host, port 25 takes senders of the stack's own domain: tests stand in for
        # other servers there with such senders (tests/mailbox.py, the SMTP peer's relay).
        "forged_sender_domains": [],
    }
    for name in ("virtual_mailboxes", "sender_logins", "local_senders"):
        _write(etc / name, templates.render(f"postfix/{name}.j2", **values))
    domains = sorted({e.rsplit("@", 1)[1] for e in emails} | {"example.test"})
    _write(etc / "domains", "".join(f"{d} OK\n" for d in domains))


def _write(path: Path, text: str) -> None:
    """Write a config or map file atomically, dated a few seconds back.

    Postfix re-reads a file whose mtime is this very second (it may still be being edited),
    sleeping 300 ms each time for about 2 s: backdating skips that wait at every start.
    """
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    past = time.time() - 10
    os.utime(tmp, (past, past))
    os.replace(tmp, path)


def _postfix(etc: Path, action: str, what: str, check: bool = True) -> str:
    """Run `postfix -c etc <action>`; when it fails, rerun it on a pseudo-terminal to learn why."""
    cmd = ["postfix", "-c", str(etc), action]
    proc = run(
        cmd, what=what, check=False, timeout=60, log=etc.parent.parent / "log" / "daemons.log"
    )
    if proc.returncode == 0 or not check:
        return proc.stdout
    # Postfix prints its reasons only to a terminal (no syslog here): `script` gives it one.
    probe = run(
        ["script", "-qec", shlex.join(["postfix", "-c", str(etc), "check"]), "/dev/null"],
        what="postfix check",
        check=False,
        timeout=60,
    )
    raise StackError(f"{what} failed: {one_line(proc.stdout + ' ' + probe.stdout) or 'no output'}")


def master_pid(state: Path) -> int | None:
    """The pid of this stack's Postfix master, or None when it is not running."""
    spool = state / "postfix" / "spool"
    pid = read_pidfile(spool / "pid" / "master.pid")
    return pid if running_in(pid, spool) else None


# The queue layout from /etc/postfix/postfix-files: (subdirectory, group or None, mode),
# all owned by postfix.
# Made here because `postfix set-permissions` takes about 2 s on a fresh queue.
QUEUE_DIRS: list[tuple[str, str | None, int]] = [
    (d, None, 0o700)
    for d in (
        "active",
        "bounce",
        "corrupt",
        "defer",
        "deferred",
        "flush",
        "hold",
        "incoming",
        "private",
        "saved",
        "trace",
    )
]
QUEUE_DIRS += [("maildrop", "postdrop", 0o730), ("public", "postdrop", 0o710)]


def _make_queue(spool: Path, lib: Path) -> None:
    """Create the queue and data directories with the owners and modes Postfix checks for."""
    for path, mode in ((spool, 0o755), (spool / "pid", 0o755), (lib, 0o700)):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    shutil.chown(lib, "postfix", "postfix")
    for name, group, mode in QUEUE_DIRS:
        path = spool / name
        path.mkdir(exist_ok=True)
        os.chmod(path, mode)
        shutil.chown(path, "postfix", group or "root")


def configure(
    state: Path, ports: PostfixPorts, cert: Path, key: Path, users: dict[str, str], mail_domain: str
) -> Path:
    """Create the directories and write main.cf, master.cf and the maps; return the config dir."""
    etc, spool, lib = (
        state / "postfix" / "etc",
        state / "postfix" / "spool",
        state / "postfix" / "lib",
    )
    for path in (etc, state / "log"):
        path.mkdir(parents=True, exist_ok=True)
    _make_queue(spool, lib)
    values = variables(state=state, ports=ports, cert=cert, key=key, mail_domain=mail_domain)
    for name in ("main.cf", "master.cf"):
        _write(etc / name, templates.render(f"postfix/{name}.j2", **values))
    write_maps(state, users)
    return etc


def start(
    state: Path, ports: PostfixPorts, cert: Path, key: Path, users: dict[str, str], mail_domain: str
) -> int:
    """Write the config, start Postfix and wait for the three listeners; return the master pid."""
    etc = configure(state, ports, cert, key, users, mail_domain)
    # postfix-script skips its integrity checks (about 2 s, mostly post-install) when this file
    # exists; _make_queue already did what they would; on failure _postfix runs `postfix check`.
    (state / "postfix" / "spool" / "quick-start").touch()
    _postfix(etc, "start", "postfix start")
    tls = ssl.create_default_context(cafile=str(cert))
    ready = wait_until(
        lambda: (
            greets(ports.smtp, b"220")
            and greets(ports.submission, b"220")
            and greets(ports.submissions, b"220", tls=tls)
        ),
        15,
    )
    pid = master_pid(state)
    if not ready or pid is None:
        raise StackError(
            f"Postfix did not answer on ports {ports}; {tail(state / 'log' / 'postfix.log')}"
        )
    return pid


def reload(state: Path) -> None:
    """Make a running Postfix re-read its config and texthash maps (read once per process)."""
    if master_pid(state) is not None:
        _postfix(state / "postfix" / "etc", "reload", "postfix reload")


def stop(state: Path, *, abort: bool = False) -> None:
    """Stop this stack's Postfix (abort: at once, without waiting for deliveries in progress)."""
    etc = state / "postfix" / "etc"
    stop_tree(
        master_pid(state),
        lambda: _postfix(etc, "abort" if abort else "stop", "postfix stop", check=False),
    )
