"""One bounded run over an account: its lock, its round of folders, its failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from app.context import ServiceContext
from app.db import advisory_lock
from app.errors import NotFound
from app.mail import MailAuthError, MailConnectionError
from app.mail.imap import FolderGone, FolderStatus, ImapSession, RemoteFolder
from app.models import Account, Folder, Message, MessageRaw
from app.services import indexing, usage
from app.services.sync.folder import Budget, FolderRun, SyncLimits, SyncObserver
from app.services.sync.rows import FolderState
from app.services.sync.store import SyncStore, now
from app.states import AccountState, FolderRole

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 0x5359  # "SY"
# A round of folders left unfinished longer than this is started afresh.
ROUND_EXPIRY = timedelta(hours=1)
# A folder's STATUS from the folder list (LIST-STATUS) stands for "nothing changed" this long
# after the list; a folder reached later in a long run is asked STATUS itself.
LISTED_STATUS_SECONDS = 30.0
# Folders are synced in this order: what users look at first, Junk and Trash last.
ROLE_ORDER: dict[FolderRole | None, int] = {
    FolderRole.INBOX: 0,
    FolderRole.SENT: 1,
    FolderRole.DRAFTS: 2,
    FolderRole.ARCHIVE: 3,
    None: 4,
    FolderRole.JUNK: 5,
    FolderRole.TRASH: 6,
}


def lock_key(account_id: int) -> int:
    """The bigint advisory-lock key of an account's sync (namespace in the high half)."""
    return (LOCK_NAMESPACE << 32) | account_id


@dataclass(frozen=True)
class SyncOutcome:
    complete: bool  # False: the run stopped at its limits (or the lock was busy)
    busy: bool = False
    auth_failed: bool = False
    messages_fetched: int = 0


# Whether a tenant's new mail is stored headers-only now (its storage quota is spent); asked
# before every batch of a sync. By default the tenant's storage quota decides.
HeadersOnly = Callable[[int], bool]


class Syncer:
    """Syncs accounts with the context's connector and database."""

    def __init__(
        self,
        ctx: ServiceContext,
        limits: SyncLimits | None = None,
        observer: SyncObserver | None = None,
        headers_only: HeadersOnly | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = SyncStore(ctx.sessions)
        self.limits = limits or SyncLimits()
        self.observer = observer or SyncObserver()
        self.headers_only = headers_only or self._over_quota
        # Whether a batch of the last run was stored headers-only because of the quota.
        self.quota_reached = False
        # Folders the server listed beyond MAX_FOLDERS_PER_ACCOUNT in the last run.
        self.folders_skipped = 0

    def sync_account(self, account_id: int) -> SyncOutcome:
        """One bounded run over the account's folders; safe to run twice or concurrently."""
        with advisory_lock(self.ctx.engine, lock_key(account_id)) as locked:
            if not locked:
                return SyncOutcome(complete=False, busy=True)
            return self._sync_locked(account_id)

    def _sync_locked(self, account_id: int) -> SyncOutcome:
        with self.ctx.sessions.begin() as s:
            account = s.get(Account, account_id)
            if account is None:
                raise NotFound(f"Account {account_id} does not exist.")
            if account.state != AccountState.ACTIVE:
                return SyncOutcome(complete=True)
            tenant_id = account.tenant_id
            if account.sync_started_at is None or now() - account.sync_started_at > ROUND_EXPIRY:
                account.sync_started_at = now()
                account.sync_folders_done = account.sync_folders_total = 0
                account.sync_messages_synced = account.sync_messages_total = 0
            round_started = account.sync_started_at
        budget = Budget(self.limits)
        self.quota_reached = False
        try:
            imap = self.ctx.connector.imap(account)
        except MailAuthError as exc:
            self._record_failure(account_id, str(exc), auth_failed=True)
            return SyncOutcome(complete=True, auth_failed=True)
        except MailConnectionError as exc:
            self._record_failure(account_id, str(exc))
            raise
        # Folders found unchanged, noted together: when the run ends, or stops at its budget.
        unchanged: list[int] = []
        try:
            listed_at = time.monotonic()
            folders = self._reconcile_folders(imap, account_id, tenant_id)
            for f, listed in folders:
                if f.last_synced_at is not None and f.last_synced_at >= round_started:
                    continue  # done earlier in this round
                if time.monotonic() - listed_at > LISTED_STATUS_SECONDS:
                    listed = None  # too old to stand for "nothing changed": ask again
                if budget.exhausted() or not self._sync_folder(imap, f, budget, listed, unchanged):
                    self.store.folders_unchanged(account_id, unchanged)
                    return SyncOutcome(complete=False, messages_fetched=budget.fetched)
            self._finish_round(account_id, self._round_note(account_id), unchanged)
            return SyncOutcome(complete=True, messages_fetched=budget.fetched)
        except MailConnectionError as exc:
            self._record_failure(account_id, str(exc), unchanged)
            raise
        except Exception as exc:
            self._record_failure(account_id, f"internal error: {type(exc).__name__}")
            raise
        finally:
            imap.close()
            if budget.fetched:
                # Its mail is readable; the indexing job makes it searchable, in a worker.
                # Asked for once the run is over (a job is at most SYNC_JOB_MAX_MESSAGES, so
                # a long first sync becomes searchable run by run): on a small machine,
                # indexing while this run still stores takes its CPU (BENCHMARKS.md, B1).
                indexing.request_index(self.ctx)

    def _sync_folder(
        self,
        imap: ImapSession,
        f: FolderState,
        budget: Budget,
        listed: FolderStatus | None,
        unchanged: list[int],
    ) -> bool:
        """Sync one folder (`listed`: its STATUS from the folder list, if any); False when
        the budget ran out before it was done. An unchanged folder is added to `unchanged`."""
        tenant_id = f.tenant_id
        run = FolderRun(
            imap,
            self.store,
            f,
            self.limits,
            budget,
            self.observer,
            headers_only=lambda: self.headers_only(tenant_id),
        )
        try:
            done = run.run(listed)
            if run.found_unchanged:
                unchanged.append(f.id)
            return done
        except FolderGone as exc:
            # One bad folder never stops the account: note it and go on.
            self.store.update_folder(f.id, last_error=str(exc), last_synced_at=now())
            return True

    def _record_failure(
        self,
        account_id: int,
        error: str,
        unchanged: list[int] | None = None,
        auth_failed: bool = False,
    ) -> None:
        """The run's failure on the account (and the folders it found unchanged before it)."""
        values: dict[str, object] = {"last_error": error[:2000]}
        if auth_failed:
            values["state"] = AccountState.AUTH_FAILED
        with self.ctx.sessions.begin() as s:
            if unchanged:
                SyncStore.note_unchanged(s, account_id, unchanged)
            s.execute(update(Account).where(Account.id == account_id).values(**values))

    def _over_quota(self, tenant_id: int) -> bool:
        """The storage quota's answer for this batch (one primary-key read)."""
        with self.ctx.sessions() as session:
            reached = usage.over_quota(session, self.ctx.settings, tenant_id)
        self.quota_reached = self.quota_reached or reached
        return reached

    def _round_note(self, account_id: int) -> str | None:
        """What the account's status says of a finished round that left something out:
        folders over MAX_FOLDERS_PER_ACCOUNT, mail stored headers-only over the quota."""
        notes = []
        if self.folders_skipped:
            limit = self.ctx.connector.imap_limits.max_folders
            log.warning(
                "folders over the limit skipped",
                extra={"account_id": account_id, "skipped": self.folders_skipped, "limit": limit},
            )
            notes.append(
                f"{self.folders_skipped} folders not synced: more than MAX_FOLDERS_PER_ACCOUNT "
                f"({limit})"
            )
        if self.quota_reached:
            log.warning(
                "storage quota reached: new mail headers only", extra={"account_id": account_id}
            )
            notes.append(
                "storage quota reached (TENANT_MAX_STORAGE_BYTES): new mail stored with its "
                "headers only; delete mail to make room"
            )
        return "; ".join(notes) or None

    def _finish_round(
        self, account_id: int, note: str | None = None, unchanged: list[int] | None = None
    ) -> None:
        """The round is complete: the folders found unchanged, the account's state, and the
        raw bytes no copy refers to any more, in one transaction."""
        with self.ctx.sessions.begin() as s:
            if unchanged:
                SyncStore.note_unchanged(s, account_id, unchanged)
            s.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(last_synced_at=now(), sync_started_at=None, last_error=note)
            )
            # Raw bytes no message refers to any more (expunged, moved and deduplicated away).
            used = select(Message.id).where(Message.raw_id == MessageRaw.id).exists()
            s.execute(delete(MessageRaw).where(MessageRaw.account_id == account_id, ~used))

    # -- folders ----------------------------------------------------------------------------

    def _reconcile_folders(
        self, imap: ImapSession, account_id: int, tenant_id: int
    ) -> list[tuple[FolderState, FolderStatus | None]]:
        """Make the folder rows match the server's list; return each folder's stored state
        (read in the same transaction) in sync order, with its STATUS when the list gave it
        (LIST-STATUS)."""
        remote = {f.remote_name: f for f in imap.folders(status=True)}
        self.folders_skipped = imap.folders_skipped
        with self.ctx.sessions.begin() as s:
            rows = {
                f.remote_name: f
                for f in s.scalars(select(Folder).where(Folder.account_id == account_id))
            }
            vanished = {name: row for name, row in rows.items() if name not in remote}
            current: list[Folder] = []
            for name, found in remote.items():
                row = rows.get(name) or _renamed(imap, vanished, found)
                if row is None:
                    row = Folder(
                        account_id=account_id,
                        tenant_id=tenant_id,
                        name=found.name,
                        remote_name=found.remote_name,
                        delimiter=found.delimiter,
                        role=found.role,
                    )
                    s.add(row)
                else:
                    row.name, row.remote_name = found.name, found.remote_name
                    row.delimiter, row.role = found.delimiter, found.role
                current.append(row)
            for row in vanished.values():
                s.delete(row)  # its messages go with it (ON DELETE CASCADE)
            s.flush()
            ordered = sorted(current, key=lambda f: (ROLE_ORDER.get(f.role, 4), f.name))
            s.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(sync_folders_total=len(ordered))
            )
            return [(FolderState.of(f), remote[f.remote_name].status) for f in ordered]


def _renamed(imap: ImapSession, vanished: dict[str, Folder], found: RemoteFolder) -> Folder | None:
    """A vanished folder that reappears under another name keeps its UIDVALIDITY."""
    candidates = [row for row in vanished.values() if row.uidvalidity is not None]
    if not candidates:
        return None
    try:
        status = found.status or imap.status(found.remote_name)
    except FolderGone:
        return None
    for row in candidates:
        if row.uidvalidity == status.uidvalidity:
            del vanished[row.remote_name]
            log.info("folder renamed", extra={"old": row.name, "new": found.name})
            return row
    return None
