"""Header values: RFC 2047 encoded-words, MIME parameters (RFC 2045 5.1, RFC 2231), filenames,
addresses (RFC 5322 3.4), dates and message ids.

Decoded here rather than by `policy.default`, which replaces undecodable bytes with U+FFFD
instead of falling back to another charset, ignores unquoted encoded-word filenames, and parses
address lists in quadratic time on some inputs. Problems confined to one header are repaired or
dropped and never raise.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from email.policy import EmailPolicy
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

from app.mail.charsets import LINEBREAK, b64decode, clean_text, decode_bytes, to_bytes

MAX_HEADER_VALUE = 64 * 1024  # characters of one header value kept
MAX_PARSED_VALUE = 4 * 1024  # characters of a header value handed to policy.default
MAX_PARAMETERS_VALUE = 16 * 1024  # characters of a MIME header whose parameters are read
MAX_ADDRESSES = 1000  # addresses read from one header
MAX_ADDRESS_CHUNK = 1024  # characters of one address handed to the stdlib parser
MAX_FILENAME = 255


@dataclass(frozen=True)
class Address:
    name: str | None  # decoded display name (RFC 2047), None when absent
    email: str  # addr-spec as in the header ("" if unparseable but present)


class _Policy(EmailPolicy):
    """policy.default, with parsed headers cached and oversized values cut before parsing."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value
        # The feed parser asks for Content-Type several times per part; parsing it is most of
        # the cost of parsing a small message, and its parser is slow on long values.
        return _fetch_cached(name, value[:MAX_PARSED_VALUE])


POLICY = _Policy()


@lru_cache(maxsize=512)
def _fetch_cached(name: str, value: str) -> Any:
    return EmailPolicy.header_fetch_parse(POLICY, name, value)


# --- RFC 2047 encoded-words -------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words anywhere in `text` (leniently, as MUAs do)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        # RFC 2047 6.2: white space between adjacent encoded-words is not displayed.
        if pending_charset is None or gap.strip():
            if pending_charset is not None:
                out.append(decode_bytes(bytes(pending), pending_charset))
                pending, pending_charset = bytearray(), None
            out.append(gap)
        charset = match.group(1).split("*", 1)[0].lower()
        encoded = to_bytes(match.group(3))
        if match.group(2) in "bB":
            data = b64decode(encoded)[0]
        else:
            data = binascii.a2b_qp(encoded, header=True)
        # Adjacent words in one charset are joined as bytes: senders split multi-byte
        # characters across words although RFC 2047 5 forbids it.
        if pending_charset is not None and charset != pending_charset:
            out.append(decode_bytes(bytes(pending), pending_charset))
            pending = bytearray()
        pending += data
        pending_charset = charset
        pos = match.end()
    if pending_charset is not None:
        out.append(decode_bytes(bytes(pending), pending_charset))
    out.append(text[pos:])
    return "".join(out)


def header_text(value: str, limit: int = MAX_HEADER_VALUE) -> str:
    """A raw header value unfolded (RFC 5322 2.2.3), decoded and cleaned."""
    value = LINEBREAK.sub("", value[:limit]).strip()
    return clean_text(decode_words(value))


# --- MIME parameters (RFC 2045 5.1, RFC 2231) -------------------------------------------------

_PARAM_SEGMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^;"])+', re.S)
_PARAM_NAME = re.compile(r"([^*]+)(?:\*(\d{1,3}))?(\*)?")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value.strip()
    value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
    # Only \" and \\ are unescaped: Windows paths in quoted filenames keep their backslashes.
    return value.replace('\\"', '"').replace("\\\\", "\\")


def mime_header(part: Message, name: str) -> tuple[str, dict[str, str]]:
    """The lower-case value and decoded parameters of a MIME header such as Content-Type."""
    raw = raw_header(part, name)
    if raw is None:
        return "", {}
    value = LINEBREAK.sub("", raw[:MAX_PARAMETERS_VALUE])
    segments = _PARAM_SEGMENT.findall(value)
    if not segments:
        return "", {}
    plain: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[bool, str]]] = {}
    for segment in segments[1:]:
        key, sep, val = segment.partition("=")
        match = _PARAM_NAME.fullmatch(key.strip().lower())
        if not sep or not match:
            continue
        pname, number, starred = match.groups()
        val = _unquote(val.strip())
        if number is None and not starred:
            plain.setdefault(pname, val)
        else:
            sections.setdefault(pname, {}).setdefault(int(number or 0), (bool(starred), val))
    params = {k: clean_text(decode_words(clean_text(v))) for k, v in plain.items()}
    for pname, parts in sections.items():
        # RFC 2231 3-4: sections are joined in order; starred ones are percent-encoded in the
        # charset named by the first section.
        charset = None
        data = bytearray()
        for number in sorted(parts):
            encoded, text = parts[number]
            chunk = to_bytes(text)
            if encoded:
                if number == min(parts) and chunk.count(b"'") >= 2:
                    declared, _lang, chunk = chunk.split(b"'", 2)
                    charset = declared.decode("ascii", "replace") or None
                chunk = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), chunk)
            data += chunk
        params[pname] = clean_text(decode_words(decode_bytes(bytes(data), charset)))
    return clean_text(segments[0]).strip().lower(), params


_BIDI_AND_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe_filename(name: str | None) -> str | None:
    """The last path component, without control or bidi-override characters (spoofed names)."""
    if name is None:
        return None
    name = _BIDI_AND_CONTROLS.sub("", name)
    parts = [p.strip() for p in re.split(r"[/\\]", name)]
    parts = [p for p in parts if p and p not in (".", "..")]
    if not parts:
        return None
    name = parts[-1]
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME]
    return name


# --- Addresses (RFC 5322 3.4) -----------------------------------------------------------------

_ADDRESS_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"?|<[^>]*>?|\[[^\]]*\]?|\\.?|[(),;:]|[^"<\[\\(),;:]+', re.S
)
_ATOMS = r'[^\s"<>()\[\]\\,;:@]+'
_BARE_ADDRESS = re.compile(rf"{_ATOMS}@{_ATOMS}")
_NAMED_ADDRESS = re.compile(
    rf'(?:"((?:[^"\\]|\\.)*)"|([^"<>()\[\]\\,;:]*?))\s*<\s*({_ATOMS}@{_ATOMS})\s*>', re.S
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_WHITESPACE = re.compile(r"\s+")


def _split_addresses(value: str) -> list[str]:
    """Split an address list on top-level commas; group names are dropped, members kept."""
    chunks: list[str] = []
    current: list[str] = []
    depth = 0
    for match in _ADDRESS_TOKEN.finditer(value):
        token = match.group()
        if depth:  # inside a comment (RFC 5322 3.2.2), which nests
            current.append(token)
            depth += token == "("
            depth -= token == ")"
        elif token == "(":
            depth = 1
            current.append(token)
        elif token in (",", ";"):
            chunks.append("".join(current).strip())
            current = []
            if len(chunks) >= MAX_ADDRESSES:
                break
        elif token == ":":  # "group-name:" starts a group; its members follow
            current = []
        else:
            current.append(token)
    else:
        chunks.append("".join(current).strip())
    return [chunk for chunk in chunks if chunk]


def _display_name(text: str | None, quoted: bool) -> str | None:
    if not text:
        return None
    text = _QUOTED_PAIR.sub(r"\1", text) if quoted else _WHITESPACE.sub(" ", text)
    return clean_text(decode_words(text)).strip() or None


def _parse_address(chunk: str) -> list[Address]:
    """One mailbox: the common forms directly, anything else through policy.default."""
    if _BARE_ADDRESS.fullmatch(chunk):
        return [Address(None, chunk)]
    match = _NAMED_ADDRESS.fullmatch(chunk)
    if match:
        quoted, unquoted, email = match.groups()
        name = _display_name(quoted, True) if quoted is not None else _display_name(unquoted, False)
        return [Address(name, email)]
    try:
        header = POLICY.header_factory("to", chunk[:MAX_ADDRESS_CHUNK])
        found = list(header.addresses)
    except Exception:  # policy.default raises on some malformed lists (e.g. RecursionError)
        found = []
    result = []
    for item in found:
        name = clean_text(item.display_name or "").strip() or None
        if item.domain or (item.username and " " not in item.username):
            email = "" if item.addr_spec == "<>" else clean_text(item.addr_spec)
        else:  # "Mailer Daemon": words, not an address
            name, email = name or clean_text(item.username).strip() or None, ""
        result.append(Address(name, email))
    return result or [Address(_display_name(chunk[:MAX_ADDRESS_CHUNK], False), "")]


def parse_addresses(values: list[str]) -> list[Address]:
    result: list[Address] = []
    for value in values:
        text = clean_text(LINEBREAK.sub("", value[:MAX_HEADER_VALUE]))
        for chunk in _split_addresses(text):
            result.extend(_parse_address(chunk))
            if len(result) >= MAX_ADDRESSES:
                return result[:MAX_ADDRESSES]
    return result


# --- Dates and message ids --------------------------------------------------------------------


def parse_date(value: str | None) -> datetime | None:
    """The Date header as UTC; no zone or "-0000" (RFC 5322 3.3: unknown zone) counts as UTC."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(header_text(value, 256))
        if 100 <= parsed.year <= 999:  # RFC 5322 4.3: a three-digit year is year + 1900
            parsed = parsed.replace(year=parsed.year + 1900)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_ANGLE_ID = re.compile(r"<([^<>]*)>")


def message_ids(value: str | None) -> list[str]:
    """The ids in a Message-ID, In-Reply-To or References value, without <> (RFC 5322 3.6.4)."""
    if not value:
        return []
    text = header_text(value)
    found = [_WHITESPACE.sub("", m) for m in _ANGLE_ID.findall(text)]
    if not found:  # bare ids, as some mailers write them
        found = text.split()
    return [i for i in found if i]


def raw_header(part: Message, name: str) -> str | None:
    """The first raw value of header `name` in `part`, without parsing it."""
    name = name.lower()
    for key, value in part.raw_items():
        if key.lower() == name:
            return value
    return None
