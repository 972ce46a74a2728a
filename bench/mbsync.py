"""mbsync (Debian's isync) as the sync comparator, in one fixed configuration.

`Fsync no` (no fsync per message: the project does not fsync per message either, PostgreSQL
commits once per batch), pull only, every folder (`Patterns *`), into a Maildir, IMAP in plain
text over loopback as the project's account is configured. One run is one process, as a user
runs it from cron.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

CONFIG = """\
Fsync no

IMAPAccount bench
Host {host}
Port {port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account bench

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel bench
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
Expunge None
"""


class Mbsync:
    """One mbsync configuration (a Maildir of its own) for one mailbox."""

    def __init__(self, directory: Path, host: str, port: int, user: str, password: str) -> None:
        self.directory = directory
        self.maildir = directory / "Maildir"
        self.config = directory / "mbsyncrc"
        directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(host=host, port=port, user=user, password=password, maildir=self.maildir)
        )
        os.chmod(self.config, 0o600)

    def reset(self) -> None:
        """Forget everything synced: the next run is an initial sync."""
        subprocess.run(["rm", "-rf", str(self.maildir)], check=True)
        self.maildir.mkdir(parents=True)

    def run(self) -> float:
        """One `mbsync -a` run; its wall time in seconds."""
        began = time.perf_counter()
        done = subprocess.run(
            ["mbsync", "-q", "-c", str(self.config), "-a"],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"mbsync failed ({done.returncode}): {done.stderr[-800:]}")
        return elapsed

    def count(self) -> int:
        """Messages in the Maildir (files under cur/ and new/)."""
        total = 0
        for root, _dirs, files in os.walk(self.maildir):
            if root.endswith(("/cur", "/new")):
                total += len(files)
        return total


def version() -> str:
    done = subprocess.run(["mbsync", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()
