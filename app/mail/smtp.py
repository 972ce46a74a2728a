"""SMTP submission over smtplib, without any knowledge of the database."""

from __future__ import annotations

import functools
import re
import smtplib
import ssl
from collections.abc import Callable
from typing import NoReturn

from app.mail import MailAuthError, MailConnectionError, MailError, ServerSettings, tls_context

TIMEOUT_SECONDS = 30


def connect(server: ServerSettings, ca_file: str | None = None) -> smtplib.SMTP:
    """An authenticated SMTP session (implicit TLS, STARTTLS, or plain for loopback tests)."""
    # Built (and cached) only when used: loading the CA store costs milliseconds.
    context = tls_context(ca_file) if server.security != "none" else None
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


# What a submission attempt can end in, besides success. The line between "retry" and
# "uncertain" is the final "." of DATA: before it, the server cannot have accepted anything.
class SendDeferred(MailError):
    """Not delivered, and safe to try again later: nothing complete reached the server."""


class SendRejected(MailError):
    """The server refused the message for good (a 5xx reply)."""


class SendUncertain(MailError):
    """The whole message went out but no reply came: the server may have accepted it."""


FINAL_REPLY_TIMEOUT = 300  # RFC 5321 4.5.3.2.6 allows 10 minutes; we wait 5
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def submit(
    server: ServerSettings,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    before_dot: Callable[[], None],
    ca_file: str | None = None,
) -> str:
    """Deliver `data` to `recipients`; return the server's reply to the final ".".

    `before_dot` runs after the whole payload is written and before the final "." that
    commits the message: the caller records there that the outcome may now be unknown. Raises
    MailAuthError, SendRejected (5xx), SendDeferred (everything that is safe to retry: no
    connection, 4xx, a connection lost before the "."), or SendUncertain.
    Recipients refused with 5xx while others are accepted are reported in the returned text.
    """
    try:
        client = connect(server, ca_file)
    except MailConnectionError as exc:
        raise SendDeferred(str(exc)) from None
    try:
        refused = _envelope(client, sender, recipients)
        code, reply = _command("DATA", lambda: client.docmd("DATA"))
        if code != 354:
            _fail(code, reply, "DATA")
        payload = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", data))
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        try:
            client.send(payload)
        except (OSError, smtplib.SMTPException) as exc:
            raise SendDeferred(f"connection lost while sending the message: {exc}") from None
        before_dot()
        try:
            client.send(b".\r\n")
        except (OSError, smtplib.SMTPException) as exc:
            # The write itself failed: the "." never left, the server discards the message.
            raise SendDeferred(f"connection lost before the end of the message: {exc}") from None
        try:
            assert client.sock is not None  # the send()s above succeeded: still connected
            client.sock.settimeout(FINAL_REPLY_TIMEOUT)
            code, reply_bytes = client.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            raise SendUncertain(
                f"no reply after the message was sent ({exc}); the server may have accepted it"
            ) from None
        reply = _reply(reply_bytes)
        if code // 100 != 2:
            _fail(code, reply, "the end of the message")
        result = f"{code} {reply}"
        if refused:
            result += "; not delivered to " + ", ".join(f"{r} ({m})" for r, m in refused.items())
        return result
    finally:
        _close(client)


def _envelope(client: smtplib.SMTP, sender: str, recipients: list[str]) -> dict[str, str]:
    """MAIL FROM and RCPT TO; the recipients refused for good (5xx), when others were taken."""
    code, reply = _command("MAIL FROM", lambda: client.mail(sender))
    if code // 100 != 2:
        _fail(code, reply, "MAIL FROM")
    refused: dict[str, str] = {}
    for recipient in recipients:
        code, reply = _command(f"RCPT TO {recipient}", functools.partial(client.rcpt, recipient))
        if code // 100 == 4:
            # Sending now would deliver to some recipients and never to this one: try the
            # whole message again later instead.
            raise SendDeferred(f"RCPT TO {recipient}: {code} {reply}")
        if code // 100 != 2:
            refused[recipient] = f"{code} {reply}"
    if len(refused) == len(recipients):
        raise SendRejected("every recipient was refused: " + "; ".join(refused.values()))
    return refused


def _command(step: str, call: Callable[[], tuple[int, bytes]]) -> tuple[int, str]:
    try:
        code, reply = call()
    except (OSError, smtplib.SMTPException) as exc:
        raise SendDeferred(f"{step} failed: {exc}") from None
    return code, _reply(reply)


def _fail(code: int, reply: str, step: str) -> NoReturn:
    if code // 100 == 4 or code < 200:
        raise SendDeferred(f"{step}: {code} {reply}")
    raise SendRejected(f"{step}: {code} {reply}")
