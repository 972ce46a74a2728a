"""Dovecot: IMAP (143 STARTTLS, 993 TLS), LMTP and SASL sockets for Postfix, passwd-file users."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import files, server, systemd

from tasks import debian
from tasks.common import changed, template
from tasks.secrets import dovecot_hash, secret_file

# One template for Dovecot 2.4 (Debian 13) and 2.3 (Debian 12), whose formats differ.
TEMPLATE = "dovecot/dovecot.conf.j2"


def variables(data, dovecot_version: str) -> dict:
    """What the Dovecot template is rendered with on a host (`data`: its host.data), for the
    host's Dovecot ("2.4" or "2.3"); the devstack renders the same template with its own values
    (devstack/dovecot.py)."""
    return {
        "devstack": False,
        "dovecot_version": dovecot_version,
        "listen": "*, ::",
        "imap_port": 143,
        "imaps_port": 993,
        "users_file": "/etc/dovecot/users",
        "mail_user": "vmail",
        "mail_group": "vmail",
        "mail_root": data.mail_root,
        "first_valid_uid": 100,
        "tls_cert": data.tls_cert_path,
        "tls_key": data.tls_key_path,
        "mail_domain": data.mail_domain,
    }


def configure(secrets: dict[str, str]) -> list:
    data = host.data
    ops = [
        server.group(name="vmail group", group="vmail", system=True),
        server.user(
            name="vmail user (owns the mailboxes)",
            user="vmail",
            group="vmail",
            system=True,
            home=data.mail_root,
            shell="/usr/sbin/nologin",
            create_home=False,
        ),
        files.directory(
            name="Mailbox root", path=data.mail_root, user="vmail", group="vmail", mode="750"
        ),
        # Dovecot's sockets for Postfix go here. Debian 12's postfix package makes it when
        # installed; Debian 13's only when Postfix first starts, which is after Dovecot.
        files.directory(
            name="Postfix's private socket directory",
            path="/var/spool/postfix/private",
            user="postfix",
            group="root",
            mode="700",
        ),
    ]
    values = variables(data, debian.release().dovecot)
    conf = template(TEMPLATE, "/etc/dovecot/dovecot.conf", group="dovecot", **values)
    # The passwd-file is re-read by Dovecot on its own: new users need no restart.
    users = secret_file(
        name="Dovecot users (password hashes)",
        path=values["users_file"],
        content="".join(
            f"{address}:{dovecot_hash(address, secrets[secret], data.mail_hostname)}::::::\n"
            for address, secret in sorted(data.mail_users.items())
        ),
        user="root",
        group="dovecot",
        mode="640",
    )
    ops += [conf, users]
    if changed(conf):
        # A broken configuration must not take down a running Dovecot.
        ops.append(
            server.shell(
                name="Dovecot configuration is valid", commands=["doveconf -n > /dev/null"]
            )
        )
    ops.append(
        systemd.service(
            name="Dovecot running",
            service="dovecot",
            running=True,
            enabled=True,
            restarted=changed(conf),
        )
    )
    return ops
