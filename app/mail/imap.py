"""IMAP over imapclient, without any knowledge of the database."""

from __future__ import annotations

import socket
import ssl

import imapclient
from imapclient.exceptions import IMAPClientError, LoginError

from app.mail import MailAuthError, MailConnectionError, ServerSettings, tls_context

TIMEOUT_SECONDS = 30


def connect(server: ServerSettings, ca_file: str | None = None) -> imapclient.IMAPClient:
    """A logged-in client; `security` chooses implicit TLS, STARTTLS or (loopback tests) none."""
    context = tls_context(ca_file)
    try:
        client = imapclient.IMAPClient(
            server.host,
            port=server.port,
            ssl=server.security == "ssl",
            ssl_context=context if server.security == "ssl" else None,
            timeout=TIMEOUT_SECONDS,
        )
    except (OSError, ssl.SSLError, IMAPClientError) as exc:
        raise MailConnectionError(
            f"IMAP connection to {server.host}:{server.port} failed: {exc}"
        ) from None
    try:
        if server.security == "starttls":
            client.starttls(context)
        client.login(server.username, server.password)
    except LoginError as exc:
        _close(client)
        raise MailAuthError(f"IMAP login refused: {_text(exc)}") from None
    except (OSError, ssl.SSLError, IMAPClientError, socket.timeout) as exc:
        _close(client)
        raise MailConnectionError(
            f"IMAP session with {server.host}:{server.port} failed: {_text(exc)}"
        ) from None
    return client


def check_login(server: ServerSettings, ca_file: str | None = None) -> None:
    """Log in and out; raise MailAuthError or MailConnectionError on failure."""
    client = connect(server, ca_file)
    _close(client)


def _close(client: imapclient.IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the connection may already be gone; nothing to clean up then
        try:
            client.shutdown()
        except Exception:
            pass


def _text(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text.strip() or type(exc).__name__
