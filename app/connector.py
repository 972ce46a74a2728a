"""The one place that opens IMAP and SMTP sessions for an account, and checks logins.

Every connection to a server a tenant named goes through a `MailConnector`: the sync, the
write-back of message changes, sending, the Sent copy, the IDLE watcher and the verification
of new settings. Credentials are decrypted here, just before use, and TLS is verified against
the system's CAs plus `MAIL_TLS_CA_FILE`.

Before every connection the host is resolved once and checked by the outbound host policy
(app.mail.policy, ALLOWED_PRIVATE_HOSTS); the session then goes to that checked address while
TLS verifies the name the tenant gave. Verifications of new settings run here too, both
servers at once within one deadline, at most `verify_slots` at a time in this process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from app.mail import (
    Category,
    LoginProblem,
    MailConnectionError,
    MailError,
    ServerSettings,
    VerifyBusy,
    imap,
    smtp,
    tls_context,
)
from app.mail.imap import ImapLimits, ImapSession
from app.mail.policy import REFUSALS, HostPolicy
from app.models import Account
from app.secrets import SecretBox
from app.states import Security

log = logging.getLogger(__name__)

# How long resolving a host may take before a sync, a send or a Sent copy connects.
RESOLVE_SECONDS = 30
# A verification's threads end by themselves at the deadline (their sockets wait no longer);
# the caller waits this much more so that a thread's own category arrives in time.
VERIFY_GRACE_SECONDS = 0.5


class MailConnector:
    """Opens sessions with an account's servers."""

    def __init__(
        self,
        secrets: SecretBox,
        ca_file: str | None = None,
        allowed_hosts: Iterable[str] = (),
        verify_slots: int = 1,
        imap_limits: ImapLimits | None = None,
    ) -> None:
        self.secrets = secrets
        self.ca_file = ca_file
        self.policy = HostPolicy(allowed_hosts)
        # Verifications hold threads and sockets until their deadline: a process runs at most
        # this many at once, whatever the number of tenants asking.
        self.verify_slots = threading.BoundedSemaphore(verify_slots)
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

    def checked(self, server: ServerSettings, deadline: float) -> ServerSettings:
        """`server` with the address its connection must go to, or MailConnectionError
        (`address not allowed`, `name not resolved`, `timed out`)."""
        address = self.policy.check(
            server.host, server.port, deadline, clear_text=server.security == Security.NONE
        )
        return replace(server, address=address)

    def host_problem(self, server: ServerSettings, deadline: float) -> str | None:
        """What the policy refuses in settings a tenant submits: `address not allowed`,
        `clear text not allowed`, or None. A name that does not resolve now is no problem
        here: a verify, or the first connection, checks again."""
        try:
            self.checked(server, deadline)
        except MailConnectionError as exc:
            if exc.category in REFUSALS:
                return exc.category
        return None

    def imap(self, account: Account) -> ImapSession:
        """A logged-in IMAP session with the account's server (close it, or use `with`)."""
        server = self.checked(self.server(account, "imap"), time.monotonic() + RESOLVE_SECONDS)
        return ImapSession.open(server, self.ca_file, self.imap_limits)

    def submit(
        self,
        account: Account,
        sender: str,
        recipients: list[str],
        data: bytes,
        before_dot: Callable[[], None],
        pool: smtp.SessionPool | None = None,
    ) -> str:
        """Deliver `data` through the account's SMTP server (app.mail.smtp.submit), on a
        session of `pool` when it keeps one for these settings."""
        server = self.checked(self.server(account, "smtp"), time.monotonic() + RESOLVE_SECONDS)
        return smtp.submit(
            server,
            sender,
            recipients,
            data,
            before_dot=before_dot,
            ca_file=self.ca_file,
            pool=pool,
        )

    def _check_imap(
        self, server: ServerSettings, ca_file: str | None, deadline: float | None = None
    ) -> None:
        imap.check_login(server, ca_file, self.imap_limits, deadline)

    def check_logins(
        self, imap_server: ServerSettings, smtp_server: ServerSettings, deadline: float
    ) -> list[LoginProblem]:
        """Log in to both servers with settings not stored yet, at once, both within
        `deadline` (time.monotonic(); resolution and the host policy included); what each
        refused, if anything. VerifyBusy when this process already runs as many
        verifications as it may."""
        if not self.verify_slots.acquire(blocking=False):
            raise VerifyBusy()
        results: dict[str, LoginProblem | None] = {}
        pending = [2]
        lock = threading.Lock()

        def run(kind: str, server: ServerSettings, check: Callable[..., None]) -> None:
            try:
                check(self.checked(server, deadline), self.ca_file, deadline=deadline)
                results[kind] = None
            except MailError as exc:
                results[kind] = LoginProblem(kind, str(exc), exc.category)
            except Exception:  # a bug, not the server: logged, reported without detail
                log.exception("verifying the %s server failed", kind)
                failed = Category.CONNECTION_FAILED
                results[kind] = LoginProblem(kind, failed, failed)
            finally:
                with lock:
                    pending[0] -= 1
                    last = pending[0] == 0
                if last:  # the slot is free once both threads are really done
                    self.verify_slots.release()

        threads = [
            threading.Thread(
                target=run, args=(kind, server, check), name=f"verify-{kind}", daemon=True
            )
            for kind, server, check in (
                ("imap", imap_server, self._check_imap),
                ("smtp", smtp_server, smtp.check_login),
            )
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0) + VERIFY_GRACE_SECONDS)
        problems = []
        for kind in ("imap", "smtp"):
            if kind not in results:
                problems.append(LoginProblem(kind, Category.TIMED_OUT, Category.TIMED_OUT))
            elif (problem := results[kind]) is not None:
                problems.append(problem)
        return problems
