"""Text from bytes in any charset, clean enough for PostgreSQL: the one place charsets are decoded.

Unknown or wrong charsets never fail: the declared charset is tried first, then UTF-8, then
windows-1252 (with Latin-1 for the bytes windows-1252 leaves undefined), run by run for 8-bit
bytes in otherwise decodable text. Output never holds NUL or lone surrogates.
"""

from __future__ import annotations

import binascii
import codecs
import re
from functools import lru_cache

# --- Text cleaning and charsets ---------------------------------------------------------------

_ESCAPED_RUN = re.compile("[\udc80-\udcff]+")  # bytes smuggled through surrogateescape
_SURROGATE = re.compile("[\ud800-\udfff]")
LINEBREAK = re.compile(r"\r\n|\r|\n")

# Labels that mail software sends for a charset whose superset is what it actually writes; the
# WHATWG Encoding Standard decodes them the same way (e.g. ISO-8859-1 as windows-1252).
_CHARSET_SUPERSETS = {
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "big5": "big5hkscs",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "iso2022_jp": "iso2022_jp_2",
    "utf8mb4": "utf-8",
}
# Python codecs that are not charsets: a message must not make us interpret escapes.
_NOT_CHARSETS = {"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined"}


def _decode_run(match: re.Match[str]) -> str:
    data = bytes(ord(c) - 0xDC00 for c in match.group())
    for charset in ("utf-8", "cp1252"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def clean_text(text: str) -> str:
    """`text` with escaped 8-bit runs decoded, other surrogates replaced and NULs removed."""
    if not text.isascii():
        text = _ESCAPED_RUN.sub(_decode_run, text)
        text = _SURROGATE.sub("\ufffd", text)
    return text.replace("\x00", "") if "\x00" in text else text


@lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset label, or None when unknown or not a charset."""
    if not charset or len(charset) > 64:
        return None
    label = charset.strip().strip("\"'").lower()
    label = label.split("*", 1)[0]  # RFC 2231 section 5: charset*language
    try:
        name = codecs.lookup(_CHARSET_SUPERSETS.get(label, label)).name
    except (LookupError, ValueError):
        return None
    name = _CHARSET_SUPERSETS.get(name, name)
    return None if name in _NOT_CHARSETS else name


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Decode with the declared charset, else UTF-8, else windows-1252/Latin-1 per run."""
    codec = _codec(charset)
    if codec and codec != "utf-8":
        try:
            return clean_text(data.decode(codec))
        except Exception:  # UnicodeError, or a codec that rejects the input its own way
            pass
    text = data.decode("utf-8", "surrogateescape")
    if _ESCAPED_RUN.sub("", text).isascii():  # not one valid UTF-8 sequence: single-byte text
        try:
            return clean_text(data.decode("cp1252"))
        except UnicodeDecodeError:
            pass
    # UTF-8 with the undecodable byte runs decoded as windows-1252: mostly-UTF-8 text with a
    # stray Latin-1 byte keeps its UTF-8.
    return clean_text(text)


def to_bytes(text: str) -> bytes:
    """Bytes behind a str from the byte parser (non-ASCII bytes are surrogate-escaped)."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # decoded non-ASCII text
        pass
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that was not an escaped byte
        return text.encode("utf-8", "replace")


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALID = _B64_ALPHABET + b"= \t\r\n"
_NOT_B64 = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))


def b64decode(data: bytes) -> tuple[bytes, bool]:
    """Lenient base64 (RFC 2045 6.8: other characters are ignored); True when it was clean."""
    garbage = bool(data.translate(None, _B64_VALID))
    try:
        return binascii.a2b_base64(data), not garbage
    except binascii.Error:  # missing padding (harmless) or a lone trailing character
        pass
    chars = data.translate(None, _NOT_B64)
    lost = len(chars) % 4 == 1  # six bits cannot make a byte
    if lost:
        chars = chars[:-1]
    return binascii.a2b_base64(chars + b"=" * (-len(chars) % 4)), not (garbage or lost)
