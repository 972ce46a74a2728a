"""Backups of the service's database: a daily `pg_dump -Fc` (systemd timer), kept N days, and
`emailservice-restore FILE` for the operator. Only on hosts with the db role.

Layout on the host:
  /usr/local/lib/emailservice/backup      the dump (run by emailservice-backup.service)
  /usr/local/sbin/emailservice-restore     restore a dump: sudo emailservice-restore FILE
  /var/backups/emailservice/               <database>-<UTC time>.dump, postgres:postgres 0700,
                                           and dkim-<UTC time>.tar (the DKIM keys, root 0600)
                                           when the host is also the mail host
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import files, systemd

from tasks import roles
from tasks.common import changed, template

UNITS = ["emailservice-backup.service", "emailservice-backup.timer"]


def configure() -> list:
    data = host.data
    ops = [
        # The dumps hold every tenant's mail and encrypted credentials: the database's owner
        # only (root reads them too).
        files.directory(
            name="Backup directory",
            path=data.backup_dir,
            user="postgres",
            group="postgres",
            mode="700",
        ),
        template("backup/backup.j2", "/usr/local/lib/emailservice/backup", mode="755"),
        template("backup/restore.j2", "/usr/local/sbin/emailservice-restore", mode="755"),
    ]
    # On a host that is also the mail host, the DKIM keys are backed up with the database.
    keys = roles.has("mail")
    units = [
        template(f"systemd/{unit}.j2", f"/etc/systemd/system/{unit}", dkim_keys=keys)
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
