"""DKIM signing and the DNS records on the deployed host, checked from outside (level 4).

Mail with an 8-bit body submitted on 587 to the run's SMTP peer (conftest.PEER_DOMAIN, routed by
the inventory's mail_transports; the peer announces no 8BITMIME) arrives converted to 7 bits and
signed, and dkimpy verifies the signature, body hash included, against the DKIM record that
`emailservice-dns` prints. The key is made once, kept by later deploys, and rotated with a new
selector published first. (Its backup and restore: test_backups.py.)
"""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.deploy.conftest import PEER_DOMAIN
from tests.deploy.deployment import ROOT, changed_operations, failure_summary
from tests.deploy.dkim_mail import (
    BODY,
    SENDER,
    dns_records,
    parse_records,
    received,
    send_8bit,
    signature_tags,
    verifies,
)
from tests.deploy.inventory import group_data

pytestmark = pytest.mark.level4

DATA = group_data("vagrant")
DOMAIN, MAIL_HOST = DATA["mail_domain"], DATA["mail_hostname"]


def _selectors(host) -> dict[str, bool]:
    """{selector: whether it signs} of the mail domain, as emailservice-dkim lists them."""
    listed = host.run("emailservice-dkim list", check=True).stdout.split("\n")
    rows = [line.split() for line in listed if line.startswith(f"{DOMAIN} ")]
    return {row[1]: row[2:] == ["active"] for row in rows}


def _signed_mail(deployed) -> tuple[bytes, dict[str, str]]:
    subject = f"dkim {uuid.uuid4().hex}"
    send_8bit(deployed, subject)
    message, _ = received(deployed, subject)
    return message, signature_tags(message)


def test_the_dns_command_prints_every_record_to_publish(deployed):
    host = deployed.host
    records = {(r.name, r.type): r.value for r in dns_records(host)}
    [selector] = _selectors(host)
    assert records[(f"{DOMAIN}.", "MX")] == f"10 {MAIL_HOST}."
    assert records[(f"{MAIL_HOST}.", "A")] == deployed.address
    assert records[(f"{DOMAIN}.", "TXT")] == "v=spf1 mx -all"
    assert records[(f"_dmarc.{DOMAIN}.", "TXT")] == DATA["dmarc_record"]
    dkim_record = records[(f"{selector}._domainkey.{DOMAIN}.", "TXT")]
    assert dkim_record.startswith("v=DKIM1; k=rsa; s=email; p=MII")
    # The same public key as the private key OpenDKIM signs with.
    public = host.run(
        f"openssl pkey -in /etc/dkimkeys/{DOMAIN}/{selector}.private -pubout -outform DER"
        " | base64 -w0",
        check=True,
    ).stdout
    assert dkim_record.endswith(f"p={public}")
    printed = host.run("emailservice-dns", check=True).stdout
    assert f"IN PTR {MAIL_HOST}." in printed  # the PTR advice
    # Zone-file strings are at most 255 characters (a 2048-bit key needs two).
    assert all(len(s) <= 255 for s in printed.split('"')[1::2])


def test_make_dns_prints_the_records_over_ssh(deployed):
    """`make dns` runs emailservice-dns on the inventory's hosts through pyinfra, as a deploy
    connects (here with the test's inventory instead of ENV's)."""
    printed = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "dns", f"INVENTORY={deployed.inventory}"]
        + [f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert parse_records(printed.stdout) == dns_records(deployed.host)
    assert printed.stdout.startswith("; DNS records")


def test_mail_with_an_8bit_body_leaves_signed_and_verifies_after_the_7bit_conversion(deployed):
    records = dns_records(deployed.host)
    [selector] = [s for s, signing in _selectors(deployed.host).items() if signing]
    subject = f"dkim {uuid.uuid4().hex}"
    send_8bit(deployed, subject)
    message, params = received(deployed, subject)

    # Postfix converted the body for the peer that does not take 8BITMIME ...
    assert "BODY=8BITMIME" not in params.upper()
    assert max(message) < 128, "an 8-bit byte reached a peer without 8BITMIME"
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().replace("\r\n", "\n") == BODY
    # ... and signed what it delivered: the signature verifies against the printed record.
    tags = signature_tags(message)
    assert (tags["d"], tags["s"], tags["a"]) == (DOMAIN, selector, "rsa-sha256")
    assert "from" in tags["h"].lower().split(":")
    assert verifies(message, records)
    # The body hash is checked: one changed character fails verification.
    assert not verifies(message.replace(b"Ende.", b"Ende!"), records)


def test_mail_sent_on_the_host_with_sendmail_is_signed_too(deployed):
    host, subject = deployed.host, f"local {uuid.uuid4().hex}"
    local = f"From: {SENDER}\nTo: someone@{PEER_DOMAIN}\nSubject: {subject}\n\nfrom cron\n"
    host.run(f"/usr/sbin/sendmail -f {SENDER} someone@{PEER_DOMAIN}", input=local, check=True)
    message, _ = received(deployed, subject)
    assert signature_tags(message)["d"] == DOMAIN
    assert verifies(message, dns_records(host))


def test_the_key_is_made_once_and_private(deployed):
    host = deployed.host
    # Two deploys (conftest), one key: the second deploy changed nothing (test_deploy_host.py).
    assert len(_selectors(host)) == 1
    assert host.run("stat -c '%a %U' /etc/dkimkeys").stdout.split() == ["700", "opendkim"]
    keys = host.run(f"stat -c '%a %U' /etc/dkimkeys/{DOMAIN}/*.private").stdout.split()
    assert keys == ["600", "opendkim"]
    # OpenDKIM listens on loopback only.
    assert "127.0.0.1:8891" in host.run("ss -Htln").stdout
    assert "DKIM keys" not in deployed.second.stdout  # no key step planned the second time


def test_rotation_publishes_first_switches_on_request_and_survives_a_deploy(deployed):
    host = deployed.host
    [old] = [s for s, signing in _selectors(host).items() if signing]

    rotated = host.run(f"emailservice-dkim rotate {DOMAIN}", check=True).stdout
    [new_record] = parse_records(rotated)
    new = new_record.name.split(".", 1)[0]
    assert new != old and _selectors(host) == {old: True, new: False}
    # The new record is printed by the DNS command too; mail is still signed with the old key.
    assert new_record in dns_records(host)
    _, tags = _signed_mail(deployed)
    assert tags["s"] == old

    # "Published": sign with the new key; the old record stays until removed.
    host.run(f"emailservice-dkim activate {DOMAIN} {new}", check=True)
    records = dns_records(host)
    message, tags = _signed_mail(deployed)
    assert tags["s"] == new
    assert verifies(message, records)
    assert {f"{old}._domainkey.{DOMAIN}.", f"{new}._domainkey.{DOMAIN}."} <= {
        r.name for r in records
    }

    # A deploy keeps the operator's rotation as it is.
    again = deployed.deploy(None, "--json")
    assert again.returncode == 0, failure_summary(again)
    assert changed_operations(again) == []
    assert _selectors(host) == {old: False, new: True}

    # The signing key cannot be removed; the old one can.
    refused = host.run(f"emailservice-dkim remove {DOMAIN} {new}")
    assert refused.returncode != 0 and "activate another selector first" in refused.stderr
    host.run(f"emailservice-dkim remove {DOMAIN} {old}", check=True)
    assert _selectors(host) == {new: True}
    assert f"{old}._domainkey" not in host.run("emailservice-dns", check=True).stdout
