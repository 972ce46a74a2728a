"""`emailservice idle`: IMAP IDLE (RFC 2177) on INBOX for every active account.

One thread and one IMAP connection per account. IDLE is re-issued every `REISSUE_SECONDS`
(servers may drop an IDLE after 30 minutes: RFC 2177 says re-issue at least every 29), and
when the server reports EXISTS/EXPUNGE the account gets a sync request, the same one the API
makes (deduplicated, so a burst of mail is one job). The account list is re-read every
`REFRESH_SECONDS`: accounts added, removed, disabled or given new credentials are picked up
while it runs. Servers without IDLE are polled with STATUS instead.

Outages: when PostgreSQL or Redis does not answer, the watcher and its threads wait for them
(retrying within two seconds, logging the outage once) and then request the sync they could
not: a change seen during the outage is not lost, as each reconnection asks for a sync.

Scaling: a connection per account is what IDLE means; `--shard K/N` runs N watchers side by
side, each taking the accounts whose id % N == K (on one host or several).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from datetime import datetime

from app.context import DEPENDENCY_ERRORS
from app.errors import Conflict, NotFound
from app.mail import MailAuthError, MailError
from app.mail.imap import ImapSession
from app.services import accounts
from app.services.sync import request_sync
from workers.runtime import Outage, context

log = logging.getLogger(__name__)
REFRESH_SECONDS = 30
REISSUE_SECONDS = 25 * 60
POLL_SECONDS = 60  # servers without IDLE
WAKE_SECONDS = 5  # how often an idling thread checks whether it should stop
# One outage of PostgreSQL or Redis, as this process sees it (shared by its threads: logged
# once, not once per account).
OUTAGE = Outage("PostgreSQL or Redis (IDLE watcher)", log)


class AccountWatcher(threading.Thread):
    """Holds IDLE for one account until told to stop."""

    def __init__(self, account_id: int) -> None:
        super().__init__(name=f"idle-{account_id}", daemon=True)
        self.account_id = account_id
        self.stopping = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._watch()
                failures = 0
            except DEPENDENCY_ERRORS as exc:
                self.stopping.wait(OUTAGE.failed(exc))
            except MailAuthError as exc:
                # The next sync marks the account auth_failed; the refresh then drops it.
                log.warning(
                    "idle login refused", extra={"account_id": self.account_id, "error": str(exc)}
                )
                self.stopping.wait(REFRESH_SECONDS * 4)
            except MailError as exc:
                failures += 1
                delay = min(5 * 2**failures, 600) * random.uniform(0.5, 1.5)
                log.info(
                    "idle connection lost",
                    extra={"account_id": self.account_id, "error": str(exc), "retry_in": delay},
                )
                self.stopping.wait(delay)
            except Exception:
                log.exception("idle watcher failed", extra={"account_id": self.account_id})
                self.stopping.wait(60)

    def _watch(self) -> None:
        ctx = context()
        with ctx.work() as unit:
            account = accounts.active_account(unit, self.account_id)
        if account is None:
            self.stopping.set()
            return
        with ctx.connector.imap(account) as imap:
            # Mail may have arrived while we were not connected.
            self._request_sync()
            if not imap.idle_supported:
                self._poll(imap)
                return
            while not self.stopping.is_set():
                imap.idle_start("INBOX")
                changed = False
                # Real time, not wake-ups counted: a server answering every wake-up at once
                # must not stretch an IDLE past its re-issue.
                reissue_at = time.monotonic() + REISSUE_SECONDS
                while time.monotonic() < reissue_at and not changed and not self.stopping.is_set():
                    # Bounded per wake-up (app.mail.imap): a flood neither grows memory nor
                    # keeps this thread from seeing `stopping`.
                    changed = imap.idle_wait(WAKE_SECONDS)
                imap.idle_stop()
                if changed:
                    self._request_sync()

    def _poll(self, imap: ImapSession) -> None:
        last = imap.status("INBOX")
        while not self.stopping.wait(POLL_SECONDS):
            current = imap.status("INBOX")
            if (current.uidnext, current.messages) != (last.uidnext, last.messages):
                self._request_sync()
            last = current

    def _request_sync(self) -> None:
        with context().work() as unit:
            try:
                request_sync(unit, self.account_id)
            except NotFound:
                return
            except Conflict:
                self.stopping.set()
        OUTAGE.over()


def shard_accounts(index: int, count: int) -> dict[int, datetime]:
    """Active accounts of this shard, with when their settings last changed."""
    with context().work() as unit:
        active = accounts.active_accounts(unit)
    return {account_id: when for account_id, when in active.items() if account_id % count == index}


def run_idle(index: int = 0, count: int = 1) -> None:
    """Watch this shard's accounts until SIGTERM or SIGINT."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watchers: dict[int, tuple[AccountWatcher, datetime]] = {}
    log.info("idle watcher started", extra={"shard": f"{index}/{count}"})
    while not stop.is_set():
        try:
            wanted = shard_accounts(index, count)
        except DEPENDENCY_ERRORS as exc:
            stop.wait(OUTAGE.failed(exc))
            continue
        except Exception:
            log.exception("could not read the accounts; retrying")
            stop.wait(REFRESH_SECONDS)
            continue
        OUTAGE.over()
        for account_id, (watcher, updated) in list(watchers.items()):
            # Gone, disabled, or new settings (a restart picks those up).
            if wanted.get(account_id) != updated or not watcher.is_alive():
                watcher.stopping.set()
                del watchers[account_id]
        for account_id, updated in wanted.items():
            if account_id not in watchers:
                watcher = AccountWatcher(account_id)
                watcher.start()
                watchers[account_id] = (watcher, updated)
        stop.wait(REFRESH_SECONDS)
    for watcher, _ in watchers.values():
        watcher.stopping.set()
    log.info("idle watcher stopped")
