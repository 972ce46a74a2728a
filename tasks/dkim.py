"""DKIM signing of the mail that leaves through Postfix: OpenDKIM, a key per mail domain.

Why OpenDKIM rather than rspamd: it does one thing (sign), is a small milter in Debian's main
archive for both supported releases, keeps its keys as plain files (easy to back up, restore and
rotate by hand), and needs no Redis of its own. rspamd would bring inbound spam filtering too,
but also its own Redis use, a web controller and a much larger configuration to keep per release.

How mail gets signed without a later conversion breaking the signature: Postfix converts an
8-bit body to 7 bits (quoted-printable) in its SMTP client when the next hop does not announce
8BITMIME (RFC 6152), and a signature over the 8-bit body no longer verifies after that. So the
submission ports and local mail (pickup) hand each message to Postfix's own signing listener on
127.0.0.1 (master.cf: `dkim-sign`), which does not announce 8BITMIME: the conversion happens on
that hop, and OpenDKIM (a milter of that listener only) signs what is then delivered unchanged.
The listener hides SMTPUTF8 too: Postfix's client takes SMTPUTF8 as implying 8BITMIME (RFC 6531
requires both) and would then skip the conversion; seen on the test host as a body hash that no
longer matched. A message that needs SMTPUTF8 is therefore returned to its sender.

Layout on a mail host:
  /etc/opendkim.conf                     from templates/opendkim/
  /etc/dkimkeys/<domain>/<sel>.private   the keys (opendkim, 0600), made once on the host
  /etc/dkimkeys/<domain>/active          the selector that signs
  /usr/local/sbin/emailservice-dkim      keys: ensure, list, rotate, activate, remove, restore
                                         (templates/dkim/); the backup timer's
                                         emailservice-files backs them up (tasks/backup.py)
  /usr/local/sbin/emailservice-dns       the DNS records to publish (same program)
The deploy never replaces a key: it runs `emailservice-dkim ensure` only when a domain has none
(or the program changed), so a second deploy changes nothing and a rotation done by the operator
stays as it is.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import File
from pyinfra.operations import files, server, systemd

from tasks.common import changed, template

KEYS_DIR = "/etc/dkimkeys"  # Debian's place for them (opendkim's package makes it, 0700)
MILTER_PORT = 8891
# Postfix's listener that signs (through the milter) and passes the mail on.
SIGNING_PORT = 10028
TOOL = "/usr/local/sbin/emailservice-dkim"


def domains(data) -> list[str]:
    """The domains whose mail this host signs: the mail domain and dkim_extra_domains."""
    return list(dict.fromkeys([data.mail_domain, *data.dkim_extra_domains]))


def configure() -> list:
    data = host.data
    names = domains(data)
    ops = [
        template(
            "opendkim/opendkim.conf.j2",
            "/etc/opendkim.conf",
            milter_port=MILTER_PORT,
            keys_dir=KEYS_DIR,
        ),
        files.directory(
            name="DKIM key directory", path=KEYS_DIR, user="opendkim", group="opendkim", mode="700"
        ),
        template(
            "dkim/emailservice-dkim.j2",
            TOOL,
            mode="755",
            keys_dir=KEYS_DIR,
            domains=names,
            mail_hostname=data.mail_hostname,
            public_addresses=list(data.public_addresses),
            dmarc=data.dmarc_record,
            key_bits=data.dkim_key_bits,
        ),
        files.link(
            name="emailservice-dns (the records to publish)",
            path="/usr/local/sbin/emailservice-dns",
            target=TOOL,
        ),
    ]
    config, tool = ops[0], ops[2]
    missing = [d for d in names if host.get_fact(File, path=f"{KEYS_DIR}/{d}/active") is None]
    if missing or changed(tool):
        # Before OpenDKIM (re)starts: it reads the tables this writes.
        ops.append(
            server.shell(
                name=f"DKIM keys ({', '.join(missing) or 'tables'})", commands=[f"{TOOL} ensure"]
            )
        )
    ops.append(
        systemd.service(
            name="OpenDKIM running",
            service="opendkim",
            running=True,
            enabled=True,
            restarted=changed(config),
        )
    )
    return ops
