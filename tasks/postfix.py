"""Postfix: MX on 25 for the mail domain, submission 587/465 with SASL through Dovecot."""

from __future__ import annotations

from pyinfra.operations import server, systemd

from tasks.common import changed, template


def configure() -> list:
    ops = [
        template("postfix/main.cf.j2", "/etc/postfix/main.cf"),
        template("postfix/master.cf.j2", "/etc/postfix/master.cf"),
        template("postfix/virtual_mailboxes.j2", "/etc/postfix/virtual_mailboxes"),
        template("postfix/sender_logins.j2", "/etc/postfix/sender_logins"),
        template("postfix/local_senders.j2", "/etc/postfix/local_senders"),
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
