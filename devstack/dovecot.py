"""The stack's own Dovecot instance: IMAP, IMAPS, LMTP and a SASL auth listener for Postfix."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from devstack import templates
from devstack.errors import StackError
from devstack.proc import (
    accepts,
    greets,
    read_pidfile,
    run,
    running_in,
    stop_tree,
    tail,
    wait_until,
)

MAIL_USER = "mail"  # an unprivileged system user (uid 8 on Debian): Dovecot refuses uid 0 for mail


@dataclass
class DovecotPorts:
    """The loopback ports one Dovecot instance listens on."""

    imap: int
    imaps: int
    lmtp: int
    auth: int


# One template for Dovecot 2.4 (Debian 13) and 2.3 (Debian 12), whose formats differ; the deploy
# renders it too.
TEMPLATE = "dovecot/dovecot.conf.j2"


def installed_version() -> str:
    """The configuration format of this machine's Dovecot: "2.4" or "2.3" (`dovecot --version`
    prints e.g. "2.4.1-4 (7d8c0e5759)")."""
    out = run(["dovecot", "--version"], what="asking Dovecot its version").stdout.strip()
    major_minor = ".".join(out.split()[0].split(".")[:2]) if out else ""
    if major_minor not in ("2.3", "2.4"):
        raise StackError(f"Dovecot {out!r} is neither 2.3 nor 2.4, the formats the stack writes")
    return major_minor


def variables(
    *,
    state: Path,
    instance: str,
    ports: DovecotPorts,
    cert: Path,
    key: Path,
    mail_domain: str,
    extra: str,
    dovecot_version: str | None = None,
) -> dict[str, object]:
    """What the Dovecot template is rendered with for a stack (on a host: tasks/dovecot.py);
    dovecot_version: "2.4" or "2.3", default this machine's."""
    mail = pwd.getpwnam(MAIL_USER)
    return {
        "devstack": True,
        "dovecot_version": dovecot_version or installed_version(),
        "instance_name": instance,
        "state_dir": str(state),
        "listen": "127.0.0.1",
        "imap_port": ports.imap,
        "imaps_port": ports.imaps,
        "lmtp_port": ports.lmtp,
        "auth_port": ports.auth,
        # Plaintext passwords ({PLAIN.B64} in each line, see passwd_line), not a host's hashes.
        "users_file": f"{state}/dovecot/passwd",
        "mail_user": MAIL_USER,
        "mail_group": grp.getgrgid(mail.pw_gid).gr_name,
        "mail_root": f"{state}/mail",
        # Below a host's 100: the mail user is a low system uid (8 on Debian).
        "first_valid_uid": mail.pw_uid,
        "tls_cert": str(cert),
        "tls_key": str(key),
        "mail_domain": mail_domain,
        "extra": extra,
    }


def config_text(values: dict[str, object]) -> str:
    """The complete dovecot.conf of a stack (nothing from /etc/dovecot is included)."""
    return templates.render(TEMPLATE, **values)


def passwd_line(email: str, password: str) -> str:
    """One passwd-file line; base64 keeps ':' and other characters in passwords harmless."""
    encoded = base64.b64encode(password.encode()).decode()
    return f"{email.lower()}:{{PLAIN.B64}}{encoded}::::::\n"


def write_users(state: Path, users: dict[str, str], *, wait: bool = False) -> None:
    """Atomically rewrite the passwd-file; with wait, return once a running Dovecot will see it.

    Dovecot re-reads a passwd-file when its mtime or size changed, but looks at most once per
    second: the new file gets an mtime that differs from the old one, and `wait` sleeps past the
    current second so the next login is checked against the new file.
    """
    path = state / "dovecot" / "passwd"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(passwd_line(e, p) for e, p in sorted(users.items())))
    os.chmod(tmp, 0o640)
    if os.geteuid() == 0:
        shutil.chown(tmp, "root", "dovecot")
    now = time.time()
    try:
        mtime = max(int(now), int(path.stat().st_mtime) + 1)
    except FileNotFoundError:
        mtime = int(now)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)
    if wait:
        time.sleep(max(mtime, int(now)) + 1.02 - time.time())


def master_pid(state: Path) -> int | None:
    """The pid of this stack's Dovecot master, or None when it is not running."""
    run_dir = state / "dovecot" / "run"
    pid = read_pidfile(run_dir / "master.pid")
    return pid if running_in(pid, run_dir) else None


def start(state: Path, config: str, ports: DovecotPorts, ca_file: Path) -> int:
    """Write the config, start Dovecot, wait for all its listeners; return the master pid."""
    for sub in ("dovecot/run", "dovecot/state", "log"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    mail_root = state / "mail"
    mail_root.mkdir(exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(mail_root, MAIL_USER, MAIL_USER)
    conf = state / "dovecot" / "dovecot.conf"
    conf.write_text(config)
    log = state / "log" / "dovecot.log"
    # We only start when master_pid() found no live master: a pid file left by a crash (whose
    # pid may linger as a zombie, or belong to someone else by now) would make Dovecot refuse.
    (state / "dovecot" / "run" / "master.pid").unlink(missing_ok=True)
    run(["dovecot", "-c", str(conf)], what="starting Dovecot", log=state / "log" / "daemons.log")
    tls = ssl.create_default_context(cafile=str(ca_file))
    ready = wait_until(
        lambda: (
            greets(ports.imap, b"* OK")
            and greets(ports.imaps, b"* OK", tls=tls)
            and greets(ports.lmtp, b"220")
            and accepts(ports.auth)
        ),
        15,
    )
    pid = master_pid(state)
    if not ready or pid is None:
        raise StackError(f"Dovecot did not answer on ports {ports}; {tail(log)}")
    return pid


def stop(state: Path) -> None:
    """Stop this stack's Dovecot (the master ends its children on SIGTERM) and wait for them."""
    stop_tree(master_pid(state))
