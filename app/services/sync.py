"""The IMAP sync: every folder of an account into PostgreSQL, correct under change and failure.

Rules (shared/SYNC.md; RFC 3501, RFC 7162, RFC 6154):
- A copy is identified by (folder, UIDVALIDITY, UID), never by Message-ID.
- Per folder we persist uidvalidity, uidnext, highestmodseq and the flag-scan time, and
  advance them only in the transaction that stored what they stand for. Invariant: every
  message the server had below the stored `uidnext` (and still has) is in the database.
- Reading never changes the mailbox: EXAMINE and BODY.PEEK[] (app.mail.imap).
- New mail is fetched in batches bounded by count and bytes, newest first, one transaction
  per batch. A crash anywhere loses nothing and duplicates nothing: the next run diffs UID
  sets (server vs. database) and inserts are idempotent (ON CONFLICT DO NOTHING).

State machine of one folder, each run:
  STATUS unchanged (uidvalidity, uidnext, message count, and HIGHESTMODSEQ with CONDSTORE;
  without it, no flag scan due)  ->  done, nothing selected or fetched.
  Otherwise EXAMINE, then
    1. UIDVALIDITY new (first sync) or unchanged: fetch missing UIDs (above uidnext when the
       invariant allows it, else the full diff).
       UIDVALIDITY changed: the old copies are invalid. Load the new ones beside them
       (the unique key includes uidvalidity), then drop the old in one transaction; a server
       that resets it on every visit is stopped after `uidvalidity_reset_limit` times.
    2. Deletions: when the counts disagree, diff the UID sets and delete what the server no
       longer has (a moved message leaves here and arrives in its new folder).
    3. Flags: with CONDSTORE, `FETCH 1:* (FLAGS) (CHANGEDSINCE m)`; without, a full rescan in
       bounded batches when due.
    4. Advance uidnext / highestmodseq in the same transaction as the counts.
  New mail before deletions, deletions before the stored modseq moves (RFC 7162 3.1).

Folders: LISTed every run; a new one is added, a vanished one deleted, and a rename (one
vanishing, one appearing with the same UIDVALIDITY) keeps its messages. \\Noselect skipped.

Failure isolation: a folder the server refuses is recorded on the folder and skipped; an
authentication failure marks the account `auth_failed`; a connection failure aborts the run
with the error recorded, and the job retries it with backoff.

Database sessions are opened per step and held briefly; the IMAP connection is held for the
run. The work per run is bounded (`SyncLimits`); the job enqueues a continuation.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from app.errors import NotFound
from app.mail import MailAuthError, MailConnectionError
from app.mail.imap import FetchedMessage, Flags, FolderGone, ImapSession, RemoteFolder
from app.mail.mime import parse_message
from app.models import Account, Folder, Message, MessageChange, MessageRaw
from app.secrets import SecretBox
from app.services.accounts import server_settings
from app.services.sync_control import ROUND_EXPIRY, account_lock
from app.states import AccountState, ChangeKind, ChangeState, FolderRole

log = logging.getLogger(__name__)
MB = 1024 * 1024
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


@dataclass(frozen=True)
class SyncLimits:
    batch_messages: int = 200
    batch_bytes: int = 20 * MB
    max_messages: int | None = 5000  # per run; None: no limit (the CLI)
    max_seconds: float | None = 240
    flag_batch: int = 5000
    # Without CONDSTORE flags can only be rescanned; how often each folder is.
    flag_scan_interval: timedelta = timedelta(minutes=10)
    uidvalidity_reset_limit: int = 3


class SyncObserver:
    """Hooks for progress display and tests; the default does nothing."""

    def folder_started(self, folder: str, missing: int) -> None:
        pass

    def batch_committed(self, folder: str, uids: list[int]) -> None:
        pass

    def folder_done(self, folder: str) -> None:
        pass


@dataclass(frozen=True)
class SyncOutcome:
    complete: bool  # False: the run stopped at its limits (or the lock was busy)
    busy: bool = False
    auth_failed: bool = False
    messages_fetched: int = 0


class _Budget:
    def __init__(self, limits: SyncLimits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.fetched = 0

    def exhausted(self) -> bool:
        limits = self.limits
        if limits.max_messages is not None and self.fetched >= limits.max_messages:
            return True
        return (
            limits.max_seconds is not None and time.monotonic() - self.started >= limits.max_seconds
        )


def now() -> datetime:
    return datetime.now(timezone.utc)


class Syncer:
    """Syncs accounts; one instance per process, its collaborators passed in."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        box: SecretBox,
        ca_file: str | None = None,
        limits: SyncLimits | None = None,
        observer: SyncObserver | None = None,
    ) -> None:
        self.sessions = sessions
        self.box = box
        self.ca_file = ca_file
        self.limits = limits or SyncLimits()
        self.observer = observer or SyncObserver()

    # -- account ----------------------------------------------------------------------------

    def sync_account(self, account_id: int) -> SyncOutcome:
        """One bounded run over the account's folders; safe to run twice or concurrently."""
        with account_lock(self.sessions.kw["bind"], account_id) as locked:
            if not locked:
                return SyncOutcome(complete=False, busy=True)
            return self._sync_locked(account_id)

    def _sync_locked(self, account_id: int) -> SyncOutcome:
        with self.sessions.begin() as s:
            account = s.get(Account, account_id)
            if account is None:
                raise NotFound(f"Account {account_id} does not exist.")
            if account.state != AccountState.ACTIVE:
                return SyncOutcome(complete=True)
            server = server_settings(account, self.box, "imap")
            tenant_id = account.tenant_id
            if account.sync_started_at is None or now() - account.sync_started_at > ROUND_EXPIRY:
                account.sync_started_at = now()
                account.sync_folders_done = account.sync_folders_total = 0
                account.sync_messages_synced = account.sync_messages_total = 0
            round_started = account.sync_started_at
        budget = _Budget(self.limits)
        try:
            imap = ImapSession.open(server, self.ca_file)
        except MailAuthError as exc:
            self._record_failure(account_id, str(exc), auth_failed=True)
            return SyncOutcome(complete=True, auth_failed=True)
        except MailConnectionError as exc:
            self._record_failure(account_id, str(exc))
            raise
        try:
            folder_ids = self._reconcile_folders(imap, account_id, tenant_id)
            for folder_id in folder_ids:
                with self.sessions.begin() as s:
                    folder = s.get(Folder, folder_id)
                    if folder.last_synced_at is not None and folder.last_synced_at >= round_started:
                        continue  # done earlier in this round
                if budget.exhausted():
                    return SyncOutcome(complete=False, messages_fetched=budget.fetched)
                if not self._sync_folder(imap, folder_id, budget):
                    return SyncOutcome(complete=False, messages_fetched=budget.fetched)
            self._finish_round(account_id)
            return SyncOutcome(complete=True, messages_fetched=budget.fetched)
        except MailConnectionError as exc:
            self._record_failure(account_id, str(exc))
            raise
        except Exception as exc:
            self._record_failure(account_id, f"internal error: {type(exc).__name__}")
            raise
        finally:
            imap.close()

    def _record_failure(self, account_id: int, error: str, auth_failed: bool = False) -> None:
        with self.sessions.begin() as s:
            values = {"last_error": error[:2000]}
            if auth_failed:
                values["state"] = AccountState.AUTH_FAILED
            s.execute(update(Account).where(Account.id == account_id).values(**values))

    def _finish_round(self, account_id: int) -> None:
        with self.sessions.begin() as s:
            finished = now()
            s.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(last_synced_at=finished, sync_started_at=None, last_error=None)
            )
            # Raw bytes no message refers to any more (expunged, moved and deduplicated away).
            used = select(Message.id).where(Message.raw_id == MessageRaw.id).exists()
            s.execute(delete(MessageRaw).where(MessageRaw.account_id == account_id, ~used))

    # -- folders ----------------------------------------------------------------------------

    def _reconcile_folders(self, imap: ImapSession, account_id: int, tenant_id: int) -> list[int]:
        """Make the folder rows match the server's list; return their ids in sync order."""
        remote = {f.remote_name: f for f in imap.folders()}
        with self.sessions.begin() as s:
            rows = {
                f.remote_name: f
                for f in s.scalars(select(Folder).where(Folder.account_id == account_id))
            }
            vanished = {name: row for name, row in rows.items() if name not in remote}
            for name, found in remote.items():
                row = rows.get(name)
                if row is None:
                    row = self._renamed(imap, vanished, found)
                if row is None:
                    s.add(
                        Folder(
                            account_id=account_id,
                            tenant_id=tenant_id,
                            name=found.name,
                            remote_name=found.remote_name,
                            delimiter=found.delimiter,
                            role=found.role,
                        )
                    )
                else:
                    row.name, row.remote_name = found.name, found.remote_name
                    row.delimiter, row.role = found.delimiter, found.role
            for row in vanished.values():
                s.delete(row)  # its messages go with it (ON DELETE CASCADE)
            s.flush()
            ordered = sorted(
                s.scalars(select(Folder).where(Folder.account_id == account_id)),
                key=lambda f: (ROLE_ORDER.get(f.role, 4), f.name),
            )
            account = s.get(Account, account_id)
            account.sync_folders_total = len(ordered)
            return [f.id for f in ordered]

    @staticmethod
    def _renamed(
        imap: ImapSession, vanished: dict[str, Folder], found: RemoteFolder
    ) -> Folder | None:
        """A vanished folder that reappears under another name keeps its UIDVALIDITY."""
        candidates = [row for row in vanished.values() if row.uidvalidity is not None]
        if not candidates:
            return None
        try:
            status = imap.status(found.remote_name)
        except FolderGone:
            return None
        for row in candidates:
            if row.uidvalidity == status.uidvalidity:
                del vanished[row.remote_name]
                log.info("folder renamed", extra={"old": row.name, "new": found.name})
                return row
        return None

    def _sync_folder(self, imap: ImapSession, folder_id: int, budget: _Budget) -> bool:
        """Sync one folder; False when the budget ran out before it was done."""
        with self.sessions.begin() as s:
            folder = s.get(Folder, folder_id)
            snapshot = _FolderState.of(folder)
        try:
            return self._sync_folder_state(imap, snapshot, budget)
        except FolderGone as exc:
            # One bad folder never stops the account: note it and go on.
            self._update_folder(folder_id, last_error=str(exc), last_synced_at=now())
            return True

    def _sync_folder_state(self, imap: ImapSession, f: _FolderState, budget: _Budget) -> bool:
        status = imap.status(f.remote_name)
        scan_due = not imap.condstore and (
            f.last_flag_scan_at is None
            or now() - f.last_flag_scan_at >= self.limits.flag_scan_interval
        )
        if (
            f.uidvalidity == status.uidvalidity
            and f.uidnext == status.uidnext
            and f.messages_count == status.messages
            and (not imap.condstore or f.highestmodseq == status.highestmodseq)
            and not scan_due
        ):
            # Nothing changed on the server, so nothing was stored: its counts stand (a local
            # flag change recounts its folder itself). One short transaction per folder.
            with self.sessions.begin() as s:
                s.execute(
                    update(Folder)
                    .where(Folder.id == f.id)
                    .values(last_synced_at=now(), last_error=None)
                )
                s.execute(
                    update(Account)
                    .where(Account.id == f.account_id)
                    .values(sync_folders_done=Account.sync_folders_done + 1)
                )
            self.observer.folder_done(f.name)
            return True

        selected = imap.examine(f.remote_name)
        validity = selected.uidvalidity
        rebuild = f.uidvalidity is not None and f.uidvalidity != validity
        if rebuild:
            if f.uidvalidity_resets >= self.limits.uidvalidity_reset_limit:
                self._update_folder(
                    f.id,
                    last_synced_at=now(),
                    last_error="UIDVALIDITY changes on every visit; folder left as it was",
                )
                return True
            log.warning(
                "UIDVALIDITY changed",
                extra={"folder": f.name, "old": f.uidvalidity, "new": validity},
            )
        incremental = not rebuild and f.uidvalidity is not None and f.uidnext is not None
        if f.uidvalidity is None:
            # First sync: copies show as their batches commit (newest first), while uidnext
            # stays unset until the folder is complete.
            self._update_folder(f.id, uidvalidity=validity)

        # 1. New (or, after a crash or a reset, still missing) messages, newest first.
        server_all: set[int] | None = None
        if incremental:
            candidates = imap.uids(from_uid=f.uidnext)
            have = self._db_uids(f.id, validity, from_uid=f.uidnext)
        else:
            server_all = candidates = imap.uids()
            have = self._db_uids(f.id, validity)
        missing = sorted(candidates - have, reverse=True)
        self.observer.folder_started(f.name, len(missing))
        if missing:
            self._add_progress(f.account_id, total=len(missing))
        if not self._fetch_missing(imap, f, validity, missing, budget):
            return False

        # 2. Deletions (after a reset, the old copies go in step 4, with the state).
        with self.sessions.begin() as s:
            if not rebuild:
                db_count = s.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.folder_id == f.id, Message.uidvalidity == validity)
                )
                if server_all is None and db_count != selected.messages:
                    server_all = imap.uids()
                if server_all is not None and db_count != len(server_all):
                    gone = self._db_uids(f.id, validity, session=s) - server_all
                    if gone:
                        s.execute(
                            delete(Message).where(
                                Message.folder_id == f.id,
                                Message.uidvalidity == validity,
                                Message.uid.in_(gone),
                            )
                        )

        # 3. Flags changed by other clients (rows just fetched already have fresh ones).
        scanned_at = None
        if not rebuild and f.uidvalidity is not None:
            if imap.condstore and f.highestmodseq is not None:
                if selected.highestmodseq != f.highestmodseq:
                    self._apply_flags(
                        f.id, validity, imap.flags("1:*", changed_since=f.highestmodseq)
                    )
            elif not imap.condstore and scan_due:
                for chunk in _chunks(sorted(self._db_uids(f.id, validity)), self.limits.flag_batch):
                    self._apply_flags(f.id, validity, imap.flags(chunk))
                scanned_at = now()
        elif not imap.condstore:
            scanned_at = now()  # everything was just fetched with its flags

        # 4. Advance the folder's state with its counts, in one transaction.
        values = dict(
            uidvalidity=validity,
            uidnext=selected.uidnext,
            highestmodseq=selected.highestmodseq,
            last_synced_at=now(),
            last_error=None,
            uidvalidity_resets=f.uidvalidity_resets + 1 if rebuild else 0,
        )
        if scanned_at is not None:
            values["last_flag_scan_at"] = scanned_at
        with self.sessions.begin() as s:
            if rebuild:
                # The new copies are all in: drop the invalid ones with the state change, so
                # the folder never shows neither or both.
                s.execute(
                    delete(Message).where(
                        Message.folder_id == f.id, Message.uidvalidity != validity
                    )
                )
            s.execute(update(Folder).where(Folder.id == f.id).values(**values))
        self._folder_counted(f.id)
        self.observer.folder_done(f.name)
        return True

    def _fetch_missing(
        self, imap: ImapSession, f: _FolderState, validity: int, missing: list[int], budget: _Budget
    ) -> bool:
        if not missing:
            return True
        sizes = imap.sizes(missing)
        for batch in _batches(missing, sizes, self.limits.batch_messages, self.limits.batch_bytes):
            if budget.exhausted():
                return False
            fetched = imap.fetch(batch)
            self._store(f, validity, fetched)
            budget.fetched += len(fetched)
            self.observer.batch_committed(f.name, [m.uid for m in fetched])
        return True

    # -- storage ----------------------------------------------------------------------------

    def _store(self, f: _FolderState, validity: int, fetched: list[FetchedMessage]) -> None:
        """One batch, one transaction: raw bytes (deduplicated), parsed rows, progress."""
        if not fetched:
            return
        raws = {hashlib.sha256(m.raw).digest(): m.raw for m in fetched}
        with self.sessions.begin() as s:
            s.execute(
                insert(MessageRaw)
                .values(
                    [
                        {
                            "account_id": f.account_id,
                            "tenant_id": f.tenant_id,
                            "sha256": digest,
                            "data": data,
                        }
                        for digest, data in raws.items()
                    ]
                )
                .on_conflict_do_nothing(index_elements=["account_id", "sha256"])
            )
            raw_ids = dict(
                s.execute(
                    select(MessageRaw.sha256, MessageRaw.id).where(
                        MessageRaw.account_id == f.account_id, MessageRaw.sha256.in_(list(raws))
                    )
                ).all()
            )
            rows = [
                _message_row(f, validity, m, raw_ids[hashlib.sha256(m.raw).digest()])
                for m in fetched
            ]
            s.execute(
                insert(Message)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["folder_id", "uidvalidity", "uid"])
            )
            s.execute(
                update(Account)
                .where(Account.id == f.account_id)
                .values(sync_messages_synced=Account.sync_messages_synced + len(rows))
            )

    def _apply_flags(self, folder_id: int, validity: int, changes: Iterable) -> None:
        params = [
            {
                "b_uid": c.uid,
                "b_seen": c.flags.seen,
                "b_flagged": c.flags.flagged,
                "b_answered": c.flags.answered,
                "b_draft": c.flags.draft,
                "b_keywords": list(c.flags.keywords),
                "b_modseq": c.modseq,
            }
            for c in changes
        ]
        if not params:
            return
        with self.sessions.begin() as s:
            s.connection().execute(
                update(Message.__table__)
                .where(
                    Message.folder_id == folder_id,
                    Message.uidvalidity == validity,
                    Message.uid == bindparam("b_uid"),
                    # A flag change the user asked for and a worker has not written back yet
                    # wins over the server's older state: never undone by a sync.
                    ~select(MessageChange.id)
                    .where(
                        MessageChange.message_id == Message.id,
                        MessageChange.kind == ChangeKind.FLAGS,
                        MessageChange.state == ChangeState.PENDING,
                    )
                    .exists(),
                )
                .values(
                    seen=bindparam("b_seen"),
                    flagged=bindparam("b_flagged"),
                    answered=bindparam("b_answered"),
                    draft=bindparam("b_draft"),
                    keywords=bindparam("b_keywords"),
                    modseq=bindparam("b_modseq"),
                ),
                params,
            )

    def _db_uids(
        self,
        folder_id: int,
        validity: int,
        from_uid: int | None = None,
        session: Session | None = None,
    ) -> set[int]:
        query = select(Message.uid).where(
            Message.folder_id == folder_id, Message.uidvalidity == validity
        )
        if from_uid is not None:
            query = query.where(Message.uid >= from_uid)
        if session is not None:
            return set(session.scalars(query))
        with self.sessions() as s:
            return set(s.scalars(query))

    def _update_folder(self, folder_id: int, **values) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Folder).where(Folder.id == folder_id).values(**values))

    def _folder_counted(self, folder_id: int) -> None:
        """The folder's counts, and one more folder done in the round's progress."""
        with self.sessions.begin() as s:
            folder = count_folder(s, folder_id)
            s.execute(
                update(Account)
                .where(Account.id == folder.account_id)
                .values(sync_folders_done=Account.sync_folders_done + 1)
            )

    def _add_progress(self, account_id: int, total: int) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(sync_messages_total=Account.sync_messages_total + total)
            )


def count_folder(session: Session, folder_id: int) -> Folder:
    """Store the message and unread counts of the folder's current copies."""
    folder = session.get(Folder, folder_id)
    current = (
        select(Message.seen)
        .where(Message.folder_id == folder_id, Message.uidvalidity == folder.uidvalidity)
        .subquery()
    )
    total, unread = session.execute(
        select(func.count(), func.count().filter(~current.c.seen))
    ).one()
    folder.messages_count, folder.unread_count = total, unread
    return folder


@dataclass(frozen=True)
class _FolderState:
    """A folder's stored sync state, read once at the start of its sync."""

    id: int
    account_id: int
    tenant_id: int
    name: str
    remote_name: str
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    messages_count: int
    last_flag_scan_at: datetime | None
    uidvalidity_resets: int

    @classmethod
    def of(cls, folder: Folder) -> _FolderState:
        return cls(
            folder.id,
            folder.account_id,
            folder.tenant_id,
            folder.name,
            folder.remote_name,
            folder.uidvalidity,
            folder.uidnext,
            folder.highestmodseq,
            folder.messages_count,
            folder.last_flag_scan_at,
            folder.uidvalidity_resets,
        )


def _message_row(f: _FolderState, validity: int, m: FetchedMessage, raw_id: int) -> dict:
    parsed = parse_message(m.raw)
    flags: Flags = m.flags

    def addresses(values) -> list[dict]:
        return [{"name": a.name, "email": a.email} for a in values]

    # What search's `to:` and words match (migration 0005 backfills the same format).
    recipients = ", ".join(
        f"{a.name} <{a.email}>" if a.name else a.email
        for a in [*parsed.to, *parsed.cc, *parsed.bcc]
    )

    return {
        "tenant_id": f.tenant_id,
        "account_id": f.account_id,
        "folder_id": f.id,
        "uidvalidity": validity,
        "uid": m.uid,
        "modseq": m.modseq,
        "seen": flags.seen,
        "flagged": flags.flagged,
        "answered": flags.answered,
        "draft": flags.draft,
        "keywords": list(flags.keywords),
        "internal_date": m.internal_date,
        "size": m.size,
        "raw_id": raw_id,
        "date": parsed.date or m.internal_date,
        "subject": parsed.subject,
        "from_name": parsed.from_.name if parsed.from_ else None,
        "from_email": parsed.from_.email if parsed.from_ else None,
        "to_addrs": addresses(parsed.to),
        "cc_addrs": addresses(parsed.cc),
        "bcc_addrs": addresses(parsed.bcc),
        "recipients": recipients or None,
        "reply_to": addresses(parsed.reply_to),
        "message_id_header": parsed.message_id,
        "in_reply_to": parsed.in_reply_to,
        "references": parsed.references,
        "headers": [[name, value] for name, value in parsed.headers],
        "text_body": parsed.text,
        "html_body": parsed.html,
        "attachments": [
            {
                "index": a.index,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "content_id": a.content_id,
                "inline": a.inline,
            }
            for a in parsed.attachments
        ],
        "has_attachments": any(not a.inline for a in parsed.attachments),
        "parse_error": parsed.parse_error,
    }


def _batches(
    uids: list[int], sizes: dict[int, int], count: int, max_bytes: int
) -> Iterator[list[int]]:
    """Consecutive groups of `uids` of at most `count` messages and about `max_bytes` bytes."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
