"""MIME parsing of stored messages: headers, bodies and attachments, without any database.

Guarantees:
- `parse_message` never raises, whatever the bytes. What it cannot parse it reports in
  `ParsedMessage.parse_error` and it returns everything it could read (headers survive a broken
  body; a message whose MIME tree cannot be built at all is read headers-only).
- Every string it returns is valid Unicode without NUL or lone surrogates, so it can go straight
  into PostgreSQL text columns. Unknown or wrong charsets never fail: the declared charset is
  tried first, then UTF-8, then windows-1252 (with Latin-1 for the bytes windows-1252 leaves
  undefined), run by run for 8-bit bytes in otherwise decodable text.
- Attachments are numbered identically by `parse_message` and `attachment_content`: from 0, in
  depth-first MIME order, over the parts with a filename or `Content-Disposition: attachment`.
  Embedded messages (message/rfc822) are not descended into: with a filename or that
  disposition they are one attachment whose content is their own raw bytes, else skipped.
- `text` is the first text/plain part that is not an attachment, else a rendering of the HTML
  body; `html` is the first such text/html part. Bytes without a header block are a body.
- `ParsedMessage.html` is sanitised by `sanitize_html` (nh3 allow-list): no scripts, no event
  handlers, no active URLs, no remote loads.
- Work is bounded: at most 1000 MIME parts are parsed (those inside embedded messages count)
  and the parser stops at the next one, so a message of millions of empty parts costs what its
  first 1000 cost, in the sync and in every attachment download alike; 50 levels of multipart
  nesting are examined, header values are cut at 64 KiB (256 KiB for the whole `headers`
  list, later headers are dropped silently), policy.default's header parsers see at most 4 KiB
  of a value.

`parse_error` is set when body content or MIME structure is lost or garbled: an empty message, a
header block that ends at a non-header line, a multipart without a boundary or without its
start or closing delimiter (truncated), base64 with invalid characters or length, the part or
nesting caps, and a MIME tree that cannot be built. Problems confined to single headers (an
unparseable Date or address list, bad encoded-words, raw 8-bit text) are repaired or dropped
per header and never set it; a charset fallback does not set it either.

The standard library's `email` package (with `policy.default`) builds the MIME tree; header
text, MIME parameters and transfer encodings are decoded here, because `policy.default`
replaces undecodable bytes with U+FFFD instead of falling back to another charset, ignores
unquoted encoded-word filenames, and parses address lists in quadratic time on some inputs.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.feedparser import BytesFeedParser
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import Policy
from io import BytesIO
from typing import TypeVar

from app.mail.charsets import LINEBREAK, b64decode, clean_text, decode_bytes, to_bytes
from app.mail.headers import (
    POLICY,
    Address,
    header_text,
    message_ids,
    mime_header,
    parse_addresses,
    parse_date,
    raw_header,
    safe_filename,
)
from app.mail.html import html_to_text, sanitize_html

__all__ = [
    "Address",
    "Attachment",
    "ParsedMessage",
    "attachment_content",
    "html_to_text",
    "parse_message",
    "sanitize_html",
]

T = TypeVar("T")
MAX_DEPTH = 50  # multipart nesting levels examined
MAX_PARTS = 1000  # MIME parts examined
MAX_HEADERS_TOTAL = 256 * 1024  # characters of names and values in `headers`
MAX_PARSE_ERROR = 500
FEED_CHUNK = 64 * 1024


# --- Result types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    index: int  # 0-based, depth-first MIME order over parts with a filename or disposition
    filename: str | None  # decoded, path components and control characters removed
    content_type: str  # lower-case maintype/subtype
    size: int  # decoded byte length
    content_id: str | None  # without <>
    inline: bool  # Content-Disposition: inline


@dataclass(frozen=True)
class ParsedMessage:
    subject: str | None
    from_: Address | None
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    reply_to: list[Address]
    date: datetime | None  # timezone-aware UTC
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Attachment]
    parse_error: str | None


# --- Transfer encodings -----------------------------------------------------------------------


def _transfer_encoding(part: Message) -> str:
    value = raw_header(part, "content-transfer-encoding") or ""
    return value.strip().split(";", 1)[0].strip().lower()


def _decode_body(part: Message, located: bytes | None = None) -> tuple[bytes, bool]:
    """A body decoded per Content-Transfer-Encoding (`located`: an embedded message's bytes)."""
    cte = _transfer_encoding(part)
    if located is None:
        payload = part.get_payload()
        if not isinstance(payload, str):
            return b"", True
        if cte != "base64":
            # get_payload() would turn 8-bit bytes into U+FFFD; decode=True hands them back
            # (and undoes quoted-printable and uuencode).
            data = part.get_payload(decode=True)
            return (data if isinstance(data, bytes) else b""), True
        # Non-ASCII in base64 is garbage, and get_payload() has already decoded it with the
        # declared charset: "?" keeps it counted as garbage.
        located = payload.encode("ascii", "replace")
    if cte == "base64":
        return b64decode(located)  # not get_payload(decode=True): it copies the payload twice
    if cte == "quoted-printable":
        return binascii.a2b_qp(located), True
    return located, True  # 7bit, 8bit, binary and unknown encodings: as sent (RFC 2045 6.4)


_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I
)


# --- The MIME tree ----------------------------------------------------------------------------


class _PartCap(Exception):
    """Raised inside the feed parser when it is about to create one part too many."""


class _CountingFactory:
    """The feed parser's message factory, counting the parts it creates.

    The cap bites WHILE parsing: the part after the MAX_PARTS-th raises `_PartCap` out of the
    parser, so a message of millions of empty parts costs the parsing of its first MAX_PARTS
    (a few kilobytes), not millions of Message objects. The first part created is the root; the
    parts attached to it by then are complete (a part is attached when its successor starts),
    so the tree built so far is a consistent prefix of the message in MIME order.
    """

    def __init__(self) -> None:
        self.created = 0
        self.root: Message | None = None

    def __call__(self, policy: Policy = POLICY) -> Message:
        if self.created >= MAX_PARTS:
            raise _PartCap
        self.created += 1
        message: Message = POLICY.message_factory(policy=policy)  # type: ignore[misc]
        if self.root is None:
            self.root = message
        return message


def _build_tree(raw: bytes, headers_only: bool = False) -> tuple[Message, bool]:
    """The MIME tree of `raw`, and whether the part cap cut it short."""
    if headers_only:
        return BytesParser(policy=POLICY).parsebytes(raw, headersonly=True), False
    factory = _CountingFactory()
    parser = BytesFeedParser(factory, policy=POLICY)
    factory.created, factory.root = 0, None  # the parser calls the factory once to probe it
    try:
        # Fed in chunks: one feed() of the whole message would split it into lines at once.
        for start in range(0, len(raw), FEED_CHUNK):
            parser.feed(raw[start : start + FEED_CHUNK])
        return parser.close(), False
    except _PartCap:
        assert factory.root is not None
        return factory.root, True


@dataclass
class _Leaf:
    part: Message
    path: tuple[int, ...]
    content_type: str
    filename: str | None
    inline: bool
    content_id: str | None


@dataclass
class _Tree:
    root: Message
    attachments: list[_Leaf]
    text: Message | None
    html: Message | None
    problems: list[str]


def _section(path: tuple[int, ...]) -> str:
    """IMAP-style part number (RFC 3501 6.4.5) for messages about a part."""
    return ".".join(str(i + 1) for i in path) or "message"


_STRUCTURE_DEFECTS = {
    "NoBoundaryInMultipartDefect": "{ctype} in {where} has no boundary",
    "StartBoundaryNotFoundDefect": "{ctype} in {where}: start boundary not found",
    "CloseBoundaryNotFoundDefect": "{ctype} in {where}: closing boundary missing (truncated?)",
    "MissingHeaderBodySeparatorDefect": "{where}: header block ends at a non-header line",
}


def _walk(root: Message, capped: bool = False) -> _Tree:
    """Attachments and body parts in depth-first MIME order, within the caps (`capped`: the
    parser stopped at the part cap, so the tree holds only the message's first parts)."""
    tree = _Tree(root, [], None, None, [])
    if capped:
        tree.problems.append(f"more than {MAX_PARTS} MIME parts; the rest was ignored")
    stack: list[tuple[Message, tuple[int, ...]]] = [(root, ())]
    seen = 0
    while stack:
        part, path = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            tree.problems.append(f"more than {MAX_PARTS} MIME parts; the rest was ignored")
            break
        try:
            ctype = clean_text(part.get_content_type())
            for defect in part.defects:
                template = _STRUCTURE_DEFECTS.get(type(defect).__name__)
                if template:
                    tree.problems.append(template.format(ctype=ctype, where=_section(path)))
            maintype = ctype.split("/", 1)[0]
            if maintype == "multipart" and part.is_multipart():
                if len(path) >= MAX_DEPTH:
                    tree.problems.append(f"multipart nested deeper than {MAX_DEPTH} levels")
                    continue
                children = _parts(part)
                stack.extend((children[i], (*path, i)) for i in reversed(range(len(children))))
                continue
            disposition, disposition_params = mime_header(part, "content-disposition")
            _, type_params = mime_header(part, "content-type")
            name = disposition_params.get("filename", type_params.get("name"))
            filename = safe_filename(name)
            if filename is not None or disposition == "attachment":
                cid = message_ids(raw_header(part, "content-id"))
                leaf = _Leaf(part, path, ctype, filename, disposition == "inline", None)
                leaf.content_id = cid[0] if cid else None
                tree.attachments.append(leaf)
            elif maintype == "message":
                pass  # an embedded message shown only as an attachment; not descended into
            elif ctype == "text/plain" or maintype == "multipart":  # multipart: no boundary
                if tree.text is None:
                    tree.text = part
            elif ctype == "text/html" and tree.html is None:
                tree.html = part
        except Exception as exc:  # one bad part must not cost the others
            tree.problems.append(f"part {_section(path)} unreadable ({type(exc).__name__})")
    return tree


# Lines the feed parser takes as header lines (email.feedparser.headerRE) and MIME boundaries
# (RFC 2046 5.1.1: at the start of a line, then optional "--", optional white space).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOUNDARY_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|$)")


def _body_start(raw: bytes, start: int, end: int) -> int:
    """Where the body of the entity at raw[start:end] begins, as the feed parser decides."""
    pos = start
    while pos < end:
        newline = _LINE_END.search(raw, pos, end)
        if newline and newline.start() == pos:
            return newline.end()  # the empty line separating headers and body
        if not _HEADER_LINE.match(raw, pos, end):
            return pos
        pos = newline.end() if newline else end
    return end


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between the delimiter lines, as the feed parser splits.

    At most MAX_PARTS + 1 ranges: more cannot match a parsed tree (the parser stops at the
    part cap), and a list of millions of ranges is the cost the cap exists to avoid."""
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    current: int | None = None  # None while in the preamble
    found = raw.find(delimiter, start, end)
    while found != -1 and len(parts) <= MAX_PARTS:
        tail = None
        if found == start or raw[found - 1] in b"\r\n":
            tail = _BOUNDARY_TAIL.match(raw, found + len(delimiter), end)
        if tail:
            if current is not None and current < found:
                # RFC 2046 5.1.1: the line break before a delimiter belongs to the delimiter.
                stop = found
                if raw[stop - 2 : stop] == b"\r\n" and stop - 2 >= current:
                    stop -= 2
                elif raw[stop - 1 : stop] in (b"\r", b"\n"):
                    stop -= 1
                parts.append((current, stop))
                if tail.group(1):
                    return parts
            elif current is None and tail.group(1):
                return parts  # a close delimiter before any part
            # (A delimiter right after another is skipped, as the feed parser does.)
            current = tail.end()
        found = raw.find(delimiter, found + 1, end)
    if current is not None:
        parts.append((current, end))
    return parts


def _embedded_bytes(raw: bytes, root: Message, path: tuple[int, ...]) -> bytes | None:
    """The raw body of the part at `path`, located in `raw`; None if it cannot be found."""
    start, end = 0, len(raw)
    node = root
    for index in path:
        boundary = node.get_boundary()
        if not boundary or not node.is_multipart():
            return None
        children = _parts(node)
        ranges = _split_multipart(raw, _body_start(raw, start, end), end, to_bytes(boundary))
        if len(ranges) != len(children):
            return None
        start, end = ranges[index]
        node = children[index]
    return raw[_body_start(raw, start, end) : end]


def _leaf_content(raw: bytes, tree: _Tree, leaf: _Leaf) -> tuple[bytes, bool]:
    """The decoded content of an attachment, and whether it decoded cleanly."""
    if leaf.part.is_multipart():  # message/*: the embedded message's own bytes
        body = _embedded_bytes(raw, tree.root, leaf.path)
        if body is None:
            body = _regenerate(_parts(leaf.part))
        return _decode_body(leaf.part, body)
    return _decode_body(leaf.part)


def _parts(multipart: Message) -> list[Message]:
    """The parts of a multipart entity ([] for any other). The parser puts only messages
    there; the declared type also allows the strings set_payload() accepts."""
    payload = multipart.get_payload()
    if not isinstance(payload, list):
        return []
    return [part for part in payload if isinstance(part, Message)]


def _regenerate(payload: list[Message]) -> bytes:
    """Serialise parsed embedded messages when their bytes could not be located."""
    out = BytesIO()
    try:
        policy = POLICY.clone(refold_source="none", cte_type="8bit", linesep="\r\n")
        for message in payload:
            BytesGenerator(out, mangle_from_=False, policy=policy).flatten(message)
    except Exception:
        pass
    return out.getvalue()


def _body_text(part: Message) -> tuple[str, bool]:
    data, ok = _decode_body(part)
    _, params = mime_header(part, "content-type")
    charset = params.get("charset")
    if charset is None and part.get_content_type() == "text/html":
        meta = _META_CHARSET.search(data, 0, 4096)
        charset = meta.group(1).decode("ascii") if meta else None
    return decode_bytes(data, charset), ok


# --- Public API -------------------------------------------------------------------------------


class _Headers:
    """Top-level raw headers, looked up case-insensitively."""

    def __init__(self, message: Message) -> None:
        self.items = list(message.raw_items())
        self.by_name: dict[str, list[str]] = {}
        for name, value in self.items:
            self.by_name.setdefault(name.lower(), []).append(value)

    def first(self, name: str) -> str | None:
        values = self.by_name.get(name)
        return values[0] if values else None

    def decoded(self) -> list[tuple[str, str]]:
        result = []
        budget = MAX_HEADERS_TOTAL
        for name, value in self.items:
            name = clean_text(name[:256]).strip()
            value = header_text(value)
            budget -= len(name) + len(value)
            if budget < 0:
                break  # capped silently, keeping a prefix in order
            result.append((name, value))
        return result


_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")


def _blank(raw: bytes) -> bool:
    """Whether `raw` is empty or white space only (raw.strip() would copy the whole message)."""
    return _NOT_BLANK.search(raw) is None


def _empty(problem: str) -> ParsedMessage:
    return ParsedMessage(
        None, None, [], [], [], [], None, None, None, [], [], None, None, [], problem
    )


def _join_problems(problems: list[str]) -> str | None:
    unique = list(dict.fromkeys(problems))
    return "; ".join(unique)[:MAX_PARSE_ERROR] or None


def parse_message(raw: bytes, *, allow_remote: bool = False) -> ParsedMessage:
    """Parse a message; never raises (problems go to `parse_error`).

    `allow_remote` keeps remote images in the sanitised HTML (when the user asks for them).
    """
    try:
        return _parse(bytes(raw), allow_remote)
    except Exception as exc:  # a bug here must not stop a folder sync
        return _empty(f"message could not be parsed ({type(exc).__name__})")


def _guard(compute: Callable[[], T], default: T) -> T:
    """`compute()`, or `default` if it raises: one unreadable header must not cost the rest."""
    try:
        return compute()
    except Exception:
        return default


def _parse(raw: bytes, allow_remote: bool = False) -> ParsedMessage:
    problems: list[str] = []
    if _blank(raw):
        return _empty("empty message")
    tree: _Tree | None = None
    try:
        root, capped = _build_tree(raw)
        tree = _walk(root, capped)
        problems.extend(tree.problems)
    except Exception as exc:  # e.g. RecursionError on absurd nesting: read the headers only
        problems.append(f"MIME structure could not be parsed ({type(exc).__name__})")
        root, _ = _build_tree(raw, headers_only=True)

    headers = _Headers(root)
    text = html = None
    attachments: list[Attachment] = []
    if tree is not None:
        for index, leaf in enumerate(tree.attachments):
            try:
                content, ok = _leaf_content(raw, tree, leaf)
            except Exception as exc:
                content, ok = b"", True
                problems.append(f"part {_section(leaf.path)} unreadable ({type(exc).__name__})")
            if not ok:
                problems.append(f"part {_section(leaf.path)}: invalid base64")
            attachments.append(_attachment(index, leaf, len(content)))
        source = None
        for part, label in ((tree.html, "HTML body"), (tree.text, "text body")):
            if part is None:
                continue
            try:
                body, ok = _body_text(part)
            except Exception as exc:
                problems.append(f"{label} unreadable ({type(exc).__name__})")
                continue
            if not ok:
                problems.append(f"{label}: invalid base64")
            if part is tree.html:
                source, html = body, sanitize_html(body, allow_remote=allow_remote)
            else:
                text = LINEBREAK.sub("\n", body)
        if text is None and source is not None:
            text = html_to_text(source)

    def addresses(name: str) -> list[Address]:
        return _guard(lambda: parse_addresses(headers.by_name.get(name, [])), [])

    def first_id(name: str) -> str | None:
        return _guard(lambda: next(iter(message_ids(headers.first(name))), None), None)

    subject = headers.first("subject")
    from_ = addresses("from")
    return ParsedMessage(
        subject=_guard(lambda: header_text(subject), None) if subject is not None else None,
        from_=from_[0] if from_ else None,
        to=addresses("to"),
        cc=addresses("cc"),
        bcc=addresses("bcc"),
        reply_to=addresses("reply-to"),
        date=_guard(lambda: parse_date(headers.first("date")), None),
        message_id=first_id("message-id"),
        in_reply_to=first_id("in-reply-to"),
        references=_guard(lambda: message_ids(headers.first("references")), []),
        headers=_guard(headers.decoded, []),
        text=text,
        html=html,
        attachments=attachments,
        parse_error=_join_problems(problems),
    )


def _attachment(index: int, leaf: _Leaf, size: int) -> Attachment:
    return Attachment(
        index=index,
        filename=leaf.filename,
        content_type=leaf.content_type,
        size=size,
        content_id=leaf.content_id,
        inline=leaf.inline,
    )


def attachment_content(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    """Attachment `index` (numbered as by `parse_message`) and its decoded bytes, or None."""
    try:
        raw = bytes(raw)
        if index < 0 or _blank(raw):
            return None
        tree = _walk(*_build_tree(raw))
        if index >= len(tree.attachments):
            return None
        leaf = tree.attachments[index]
        content, _ok = _leaf_content(raw, tree, leaf)
        return _attachment(index, leaf, len(content)), content
    except Exception:  # unparseable: there is no such attachment to give
        return None
