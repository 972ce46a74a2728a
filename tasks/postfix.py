"""Postfix: MX on 25 for the mail domain, submission 587/465 with SASL through Dovecot."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import server, systemd

from tasks import dkim
from tasks.common import changed, template


def variables(data) -> dict:
    """What templates/postfix/*.j2 are rendered with on a host (`data`: its host.data); the
    devstack renders the same templates with its own values (devstack/postfix.py)."""
    return {
        "devstack": False,
        "config_dir": "/etc/postfix",
        "mail_hostname": data.mail_hostname,
        "mail_domain": data.mail_domain,
        # Local processes may send through port 25 without logging in.
        "mynetworks": "127.0.0.0/8 [::1]/128",
        "inet_interfaces": "all",
        "inet_protocols": "all",
        "smtp_listen": "smtp",
        "submission_listen": "submission",
        "submissions_listen": "submissions",
        # Debian's Postfix runs its daemons chrooted in /var/spool/postfix.
        "chroot": "y",
        "mailbox_domains": data.mail_domain,
        "mail_users": sorted(data.mail_users),
        "forged_sender_domains": [data.mail_domain],
        # Dovecot's sockets inside the chroot (templates/dovecot/).
        "dovecot_lmtp": "unix:private/dovecot-lmtp",
        "dovecot_auth": "private/auth",
        "tls_cert": data.tls_cert_path,
        "tls_key": data.tls_key_path,
        # Outgoing mail is signed on its way out (tasks/dkim.py).
        "dkim_signing_port": dkim.SIGNING_PORT,
        "dkim_milter": f"inet:127.0.0.1:{dkim.MILTER_PORT}",
        "transports": dict(data.mail_transports),
    }


def configure() -> list:
    values = variables(host.data)
    ops = [
        template("postfix/main.cf.j2", "/etc/postfix/main.cf", **values),
        template("postfix/master.cf.j2", "/etc/postfix/master.cf", **values),
        template("postfix/virtual_mailboxes.j2", "/etc/postfix/virtual_mailboxes", **values),
        template("postfix/sender_logins.j2", "/etc/postfix/sender_logins", **values),
        template("postfix/local_senders.j2", "/etc/postfix/local_senders", **values),
        template("postfix/transport.j2", "/etc/postfix/transport", **values),
    ]
    restart = changed(*ops)
    if restart:
        ops.append(
            server.shell(
                name="Postfix configuration is valid, without warnings",
                commands=[
                    "postfix check",
                    # postconf prints warnings (unused parameters, typos) on stderr.
                    "! postconf 2>&1 >/dev/null | grep -i warning",
                ],
            )
        )
    ops.append(
        systemd.service(
            name="Postfix running", service="postfix", running=True, enabled=True, restarted=restart
        )
    )
    return ops
