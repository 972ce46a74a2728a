"""The one place that opens IMAP and SMTP sessions for an account, and checks logins.

Every connection to a server a tenant named goes through a `MailConnector`: the sync, the
write-back of message changes, sending, the Sent copy, the IDLE watcher and the verification
of new settings. Credentials are decrypted here, just before use, and TLS is verified against
the system's CAs plus `MAIL_TLS_CA_FILE`. What a connection may reach and how much it may
read is decided here too, so a policy for outbound connections has one place to live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.mail import MailAuthError, MailConnectionError, ServerSettings, imap, smtp, tls_context
from app.mail.imap import ImapLimits, ImapSession
from app.models import Account
from app.secrets import SecretBox
from app.states import Security


@dataclass(frozen=True)
class LoginProblem:
    """Why a server refused settings: `server` is "imap" or "smtp"."""

    server: str
    message: str


class MailConnector:
    """Opens sessions with an account's servers."""

    def __init__(
        self,
        secrets: SecretBox,
        ca_file: str | None = None,
        imap_limits: ImapLimits | None = None,
    ) -> None:
        self.secrets = secrets
        self.ca_file = ca_file
        # How much and how long any IMAP server may make us read (app.mail.imap).
        self.imap_limits = imap_limits or ImapLimits()

    def load_trust_store(self) -> None:
        """Load the CA certificates now (a worker does it once, before it forks per job)."""
        tls_context(self.ca_file)

    def server(self, account: Account, kind: str) -> ServerSettings:
        """The account's decrypted IMAP or SMTP settings."""
        return ServerSettings(
            host=getattr(account, f"{kind}_host"),
            port=getattr(account, f"{kind}_port"),
            security=Security(getattr(account, f"{kind}_security")),
            username=getattr(account, f"{kind}_username"),
            password=self.secrets.decrypt(getattr(account, f"{kind}_password_encrypted")),
        )

    def imap(self, account: Account) -> ImapSession:
        """A logged-in IMAP session with the account's server (close it, or use `with`)."""
        return ImapSession.open(self.server(account, "imap"), self.ca_file, self.imap_limits)

    def submit(
        self,
        account: Account,
        sender: str,
        recipients: list[str],
        data: bytes,
        before_dot: Callable[[], None],
    ) -> str:
        """Deliver `data` through the account's SMTP server (app.mail.smtp.submit)."""
        return smtp.submit(
            self.server(account, "smtp"),
            sender,
            recipients,
            data,
            before_dot=before_dot,
            ca_file=self.ca_file,
        )

    def _check_imap(self, server: ServerSettings, ca_file: str | None) -> None:
        imap.check_login(server, ca_file, self.imap_limits)

    def check_logins(
        self, imap_server: ServerSettings, smtp_server: ServerSettings
    ) -> list[LoginProblem]:
        """Log in to both servers with settings not stored yet; what each refused, if anything."""
        problems = []
        for kind, server, check in (
            ("imap", imap_server, self._check_imap),
            ("smtp", smtp_server, smtp.check_login),
        ):
            try:
                check(server, self.ca_file)
            except (MailAuthError, MailConnectionError) as exc:
                problems.append(LoginProblem(kind, str(exc)))
        return problems
