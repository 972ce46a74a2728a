"""Protocol adapters (IMAP, SMTP, MIME): no database, no Flask.

`ServerSettings` and `tls_context` are the one place connection parameters are built; the
adapters turn library and socket errors into `MailAuthError` / `MailConnectionError` at their
boundary, so callers handle two error types, not a dozen.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import lru_cache

from app.states import Security


class MailError(Exception):
    """A mail server could not be used."""


class MailAuthError(MailError):
    """The server refused the credentials."""


class MailConnectionError(MailError):
    """The server could not be reached or spoke unexpectedly (network, TLS, protocol)."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    security: Security
    username: str
    password: str = field(repr=False)
    # The checked address to connect to (the outbound host policy resolves `host` once);
    # TLS is still verified against `host`. None: connect to `host`.
    address: str | None = None


@lru_cache(maxsize=8)
def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying TLS context: the system's CAs, plus `ca_file` (a private CA) when given."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
