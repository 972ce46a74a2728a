"""Backups, on a daily systemd timer, kept backup_keep_days; a restore command for each part.

What each host backs up, by its roles:
  db      the service's database: `pg_dump -Fc` (run as postgres)
  mail    the DKIM keys (a tar of the key directory's domains) and the mailboxes: a Maildir
          copy per run in which unchanged messages are hard links to the previous copy
  api or mail   the TLS certificate and key, and /etc/letsencrypt when ACME is used
emailservice-files writes (under a temporary name, renamed when complete) and prunes all but the
dump (which runs as postgres, in the unit's sandbox).

Layout on the host:
  /usr/local/lib/emailservice/backup       the dump (db hosts)
  /usr/local/sbin/emailservice-restore     restore a dump: sudo emailservice-restore FILE
  /usr/local/sbin/emailservice-files       mailboxes, DKIM keys and certificate: backup,
                                           list, restore-mail SNAPSHOT [ADDRESS...],
                                           restore-certificate ARCHIVE (the DKIM keys:
                                           emailservice-dkim restore ARCHIVE, tasks/dkim.py)
  /var/backups/emailservice/               0700, postgres's on db hosts (root reads it too):
                                           <database>-<UTC time>.dump, dkim-<time>.tar,
                                           mail-<time>/ and certificate-<time>.tar (root only)
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import files, systemd

from tasks import dkim, roles
from tasks.common import changed, template

UNITS = ["emailservice-backup.service", "emailservice-backup.timer"]
FILES_TOOL = "/usr/local/sbin/emailservice-files"


def configure() -> list:
    data = host.data
    database, mail = roles.has("db"), roles.has("mail")
    owner = "postgres" if database else "root"
    ops = [
        # Every tenant's mail, encrypted credentials and keys: private to the backup's owner.
        files.directory(
            name="Backup directory", path=data.backup_dir, user=owner, group=owner, mode="700"
        ),
        template(
            "backup/files.j2",
            FILES_TOOL,
            mode="755",
            mail_root=data.mail_root if mail else None,
            dkim_keys=dkim.KEYS_DIR if mail else None,
            cert_path=data.tls_cert_path,
            key_path=data.tls_key_path,
        ),
    ]
    if database:
        ops += [
            template("backup/backup.j2", "/usr/local/lib/emailservice/backup", mode="755"),
            template("backup/restore.j2", "/usr/local/sbin/emailservice-restore", mode="755"),
        ]
    units = [
        template(
            f"systemd/{unit}.j2",
            f"/etc/systemd/system/{unit}",
            database=database,
            mail=mail,
            files_tool=FILES_TOOL,
        )
        for unit in UNITS
    ]
    ops += units
    if changed(*units):
        ops.append(systemd.daemon_reload(name="Reload systemd units (backup)"))
    ops.append(
        systemd.service(
            name="Backup timer",
            service="emailservice-backup.timer",
            running=True,
            enabled=True,
            restarted=changed(*units),
        )
    )
    return ops
