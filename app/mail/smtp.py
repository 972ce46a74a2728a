"""SMTP submission over smtplib, without any knowledge of the database."""

from __future__ import annotations

import smtplib
import ssl

from app.mail import MailAuthError, MailConnectionError, ServerSettings, tls_context

TIMEOUT_SECONDS = 30


def connect(server: ServerSettings, ca_file: str | None = None) -> smtplib.SMTP:
    """An authenticated SMTP session (implicit TLS, STARTTLS, or plain for loopback tests)."""
    context = tls_context(ca_file)
    try:
        if server.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host, server.port, timeout=TIMEOUT_SECONDS, context=context
            )
        else:
            client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT_SECONDS)
        client.ehlo()
        if server.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
    except (OSError, ssl.SSLError, smtplib.SMTPException) as exc:
        raise MailConnectionError(
            f"SMTP connection to {server.host}:{server.port} failed: {exc}"
        ) from None
    try:
        client.login(server.username, server.password)
    except smtplib.SMTPAuthenticationError as exc:
        _close(client)
        raise MailAuthError(
            f"SMTP login refused: {exc.smtp_code} {_reply(exc.smtp_error)}"
        ) from None
    except (OSError, smtplib.SMTPException) as exc:
        _close(client)
        raise MailConnectionError(
            f"SMTP session with {server.host}:{server.port} failed: {exc}"
        ) from None
    return client


def check_login(server: ServerSettings, ca_file: str | None = None) -> None:
    """Authenticate and quit; raise MailAuthError or MailConnectionError on failure."""
    _close(connect(server, ca_file))


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except Exception:  # already disconnected
        client.close()


def _reply(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
