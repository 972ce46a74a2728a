"""Mail from the deployed host to the run's own SMTP peer, and its DKIM signature checked with
dkimpy against the records the host prints (`emailservice-dns`), passed as the DNS answers."""

from __future__ import annotations

import re
import smtplib
import time
import uuid
from dataclasses import dataclass

import dkim

from tests.deploy.conftest import PEER_DOMAIN
from tests.deploy.deployment import Deployment, tls
from tests.deploy.testhost import TestHost

SENDER = "test@example.test"
# 8-bit text: Postfix must turn it into quoted-printable for a peer without 8BITMIME.
BODY = "Grüße aus Köln: ½ Liter für 3 €, bitte…\n" * 3 + "Ende.\n"
_RECORD = re.compile(r"^(\S+)\s+\d+\s+IN\s+(\S+)\s+(.*)$")


@dataclass(frozen=True)
class Record:
    name: str
    type: str
    value: str  # a TXT record's strings joined, as a resolver hands them over


def dns_records(host: TestHost) -> list[Record]:
    """What `emailservice-dns` tells the operator to publish."""
    printed = host.run("emailservice-dns", check=True).stdout
    return parse_records(printed)


def parse_records(printed: str) -> list[Record]:
    found = []
    for line in printed.splitlines():
        match = _RECORD.match(line)
        if match is None:
            continue
        name, kind, rest = match.groups()
        if kind == "TXT":
            value = "".join(re.findall(r'"([^"]*)"', rest))
        else:
            value = rest.split(";", 1)[0].strip()
        found.append(Record(name, kind, value))
    return found


def send_8bit(deployed: Deployment, subject: str) -> None:
    """A message with an 8-bit body (BODY=8BITMIME), submitted on 587 as the test mailbox."""
    headers = (
        f"From: {SENDER}\r\nTo: someone@{PEER_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    raw = headers.encode() + BODY.replace("\n", "\r\n").encode()
    with smtplib.SMTP(deployed.address, 587, timeout=30) as smtp:
        smtp.starttls(context=tls(deployed.ca))
        smtp.login(SENDER, deployed.secrets["MAILBOX_TEST_PASSWORD"])
        smtp.sendmail(SENDER, [f"someone@{PEER_DOMAIN}"], raw, mail_options=["BODY=8BITMIME"])


def received(deployed: Deployment, subject: str, timeout: float = 60) -> tuple[bytes, str]:
    """The message with `subject` as the peer got it, and its MAIL command's parameters."""
    peer = deployed.peer
    assert peer is not None
    deadline = time.monotonic() + timeout
    while True:
        for data, params in zip(list(peer.received), list(peer.mail_params), strict=False):
            if f"Subject: {subject}".encode() in data:
                return data, params
        if time.monotonic() > deadline:
            queue = deployed.host.run("postqueue -p; journalctl -u postfix -n 40 --no-pager")
            raise AssertionError(f"the peer got no message {subject!r}:\n{queue.stdout}")
        time.sleep(0.3)


def signature_tags(message: bytes) -> dict[str, str]:
    """The tags of the message's DKIM-Signature header (RFC 6376 3.5)."""
    match = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.M | re.S | re.I)
    assert match, "no DKIM-Signature header"
    value = re.sub(r"\s+", "", match.group(1).decode())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def verifies(message: bytes, records: list[Record]) -> bool:
    """dkimpy's verdict, with `records` as the only DNS it can ask."""

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        values = [r.value for r in records if r.type == "TXT" and r.name == wanted]
        return values[0].encode() if values else None

    return bool(dkim.verify(message, dnsfunc=dnsfunc))
