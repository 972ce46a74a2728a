"""Outgoing messages: addresses checked, MIME built once, without any database.

`parse_address` takes what a user types (`addr` or `Name <addr>`) and refuses anything a header
could be smuggled through: CR, LF or NUL anywhere, more than one address, a malformed address.
`build` turns an `Outgoing` into the exact bytes that will be sent (CRLF line ends, RFC 2047
encoded non-ASCII names and subject, our own Message-ID and Date) so every attempt and the Sent
copy carry the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from email_validator import EmailNotValidError, validate_email

# Characters that end a header line (or a C string) and so could inject headers.
FORBIDDEN = ("\r", "\n", "\x00")

# What an address may be, published as a pattern in the OpenAPI document so clients (and the
# fuzzer) know exactly what is accepted: a dot-atom local part (RFC 5322 atext, at most 63
# characters) at an ASCII domain name of letters, digits and single hyphens; optionally after
# a display name, bare or in double quotes (no control characters, quotes, <, > or backslash).
# Written in the regular-expression subset Python and ECMA-262 read alike.
_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = f"{_ATEXT}{{1,15}}(?:\\.{_ATEXT}{{1,15}}){{0,3}}"
_LABEL = "[A-Za-z0-9]{1,20}(?:-[A-Za-z0-9]{1,20}){0,2}"
_ADDR = f"{_LOCAL}@(?:{_LABEL}\\.){{1,4}}[A-Za-z]{{2,12}}"
_NAME = '[^\\x00-\\x1f\\x7f"<>\\\\]{0,200}'
ADDRESS_PATTERN = f'^(?:{_ADDR}|{_NAME}<{_ADDR}>|"{_NAME}" ?<{_ADDR}>)$'
_ADDRESS = re.compile(
    f"(?P<bare>{_ADDR})|(?P<name>{_NAME})<(?P<angle>{_ADDR})>"
    f'|"(?P<quoted>{_NAME})" ?<(?P<angle2>{_ADDR})>'
)


class AddressError(ValueError):
    """An address the service will not put in a header; the message says why."""


@dataclass(frozen=True)
class Address:
    name: str | None
    email: str  # ASCII (an internationalised domain in its IDNA form)

    def __str__(self) -> str:
        return str(HeaderAddress(display_name=self.name or "", addr_spec=self.email))

    def formatted(self) -> str:
        """As the user would write it: `Name <addr>` or `addr` (not MIME-encoded)."""
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Outgoing:
    sender: Address
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]  # envelope only: never written into a header
    subject: str
    text: str | None
    html: str | None
    attachments: list[OutgoingAttachment] = field(default_factory=list)
    in_reply_to: str | None = None
    references: str | None = None

    def recipients(self) -> list[str]:
        """Envelope recipients, each once, in to, cc, bcc order."""
        seen: dict[str, None] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(address.email.lower(), None)
        return [a for a in seen]


@dataclass(frozen=True)
class Built:
    mime: bytes
    message_id: str


def check_header_value(value: str) -> str:
    """`value` unchanged, or ValueError when it holds CR, LF or NUL (header injection)."""
    if any(c in value for c in FORBIDDEN):
        raise ValueError("must not contain CR, LF or NUL characters")
    return value


def parse_address(value: str) -> Address:
    """`addr` or `Name <addr>` as an Address; AddressError naming the problem otherwise."""
    if any(c in value for c in FORBIDDEN):
        raise AddressError("must not contain CR, LF or NUL characters")
    match = _ADDRESS.fullmatch(value)
    if match is None:
        raise AddressError(
            f"{value[:100]!r} is not one address written `addr` or `Name <addr>` (ASCII "
            "addresses: letters, digits and single hyphens in the domain)"
        )
    name = match["quoted"] if match["quoted"] is not None else match["name"]
    addr = match["bare"] or match["angle"] or match["angle2"]
    try:
        # The pattern admits only what this accepts; kept as a second opinion on the syntax.
        checked = validate_email(
            addr,
            check_deliverability=False,
            globally_deliverable=False,
            test_environment=True,
            allow_smtputf8=False,
        )
    except EmailNotValidError as exc:
        raise AddressError(f"{addr!r} is not a valid email address: {exc}") from None
    return Address((name or "").strip() or None, checked.normalized)


def build(message: Outgoing, *, now: datetime | None = None) -> Built:
    """The message as bytes, ready for SMTP and for APPEND."""
    domain = message.sender.email.rpartition("@")[2]
    message_id = make_msgid(domain=domain)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = HeaderAddress(
        display_name=message.sender.name or "", addr_spec=message.sender.email
    )
    if message.to:
        msg["To"] = [_header(a) for a in message.to]
    if message.cc:
        msg["Cc"] = [_header(a) for a in message.cc]
    if not message.to and not message.cc:
        msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = message.subject
    msg["Date"] = format_datetime(now or datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    if message.in_reply_to:
        msg["In-Reply-To"] = message.in_reply_to
        msg["References"] = " ".join(filter(None, (message.references, message.in_reply_to)))
    msg["MIME-Version"] = "1.0"
    if message.text is not None or message.html is None:
        msg.set_content(message.text or "")
        if message.html is not None:
            msg.add_alternative(message.html, subtype="html")
    else:
        msg.set_content(message.html, subtype="html")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return Built(msg.as_bytes(), message_id)


def _header(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name or "", addr_spec=address.email)
