"""Messages: reading them, and the user's changes (flags, move, delete) written back over IMAP.

Reading is tenant-bound like every API query (app.tenancy). A change is recorded as a
MessageChange and applied by a worker on the real IMAP server: flags with UID STORE, moves
with UID MOVE (or COPY + UID EXPUNGE), deletions as a move to the Trash role folder, or, for
a message already in Trash, an expunge. Flag changes show at once; a move shows when the
server has done it (its new UID in the target folder is known from COPYUID, RFC 4315).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Unpack, cast

from sqlalchemy import ColumnElement, Row, Table, and_, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.context import DEPENDENCY_ERRORS, ServiceContext, Unit
from app.errors import Conflict, NotFound, ValidationFailed
from app.jobs import APPLY_MESSAGE_CHANGES, backoff
from app.mail import MailConnectionError
from app.mail.imap import FolderGone, ImapSession
from app.mail.mime import Attachment, attachment_content, parse_message
from app.models import Account, Folder, Message, MessageChange, MessageRaw
from app.services.accounts import get_account
from app.services.sync import count_folder
from app.states import AccountState, ChangeKind, ChangeState, FolderRole

log = logging.getLogger(__name__)
# Network failures are retried this many times, with exponential backoff and jitter.
APPLY_RETRIES = 5
# A change still pending this long after it was asked for, with no failure recorded, lost its
# job (a worker killed mid-change, a database or Redis outage at the wrong moment): the sweep
# (resume_pending) queues it again. Well above the time a queued change waits normally.
RESUME_AFTER = timedelta(seconds=60)
# Columns a moved copy takes over from the original (the rest is its own, or generated).
_OWN_COLUMNS = {"id", "folder_id", "uidvalidity", "uid", "modseq", "created_at"}
# What a summary shows (lists and search hits load only these).
SUMMARY_COLUMNS = (
    Message.id,
    Message.account_id,
    Message.folder_id,
    Message.uidvalidity,
    Message.uid,
    Message.subject,
    Message.from_name,
    Message.from_email,
    Message.to_addrs,
    Message.cc_addrs,
    Message.date,
    Message.seen,
    Message.flagged,
    Message.answered,
    Message.draft,
    Message.has_attachments,
    Message.size,
    Message.too_large,
    Message.over_quota,
)


# What a summary is made from: a message, or a row of its SUMMARY_COLUMNS.
Summarized = Message | Row[Unpack[tuple[Any, ...]]]


@dataclass(frozen=True)
class Copy:
    """A message (one copy in one folder) and the folder's name."""

    message: Summarized
    folder: str


@dataclass(frozen=True)
class MessageView:
    """A message as one reads it: its copy and its HTML (sanitised)."""

    message: Message
    folder: str
    html: str | None


def get_message(unit: Unit, message_id: int) -> tuple[Message, Folder]:
    """A current copy and its folder; a copy left behind by a UIDVALIDITY change is gone."""
    row = unit.session.execute(
        select(Message, Folder)
        .join(Folder, Folder.id == Message.folder_id)
        .where(Message.id == message_id, Message.uidvalidity == Folder.uidvalidity)
    ).first()
    if row is None:
        raise NotFound(f"Message {message_id} does not exist.")
    return row[0], row[1]


def read_message(
    unit: Unit, message: Message, folder: Folder, *, remote_images: bool = False
) -> MessageView:
    """A message (from get_message) in full; with `remote_images`, its HTML keeps remote
    images."""
    html = message.html_body
    if html is not None and remote_images and not (message.too_large or message.over_quota):
        # The stored HTML had remote loads removed; asking for them means sanitising the
        # original again, from the raw bytes.
        html = parse_message(raw_bytes(unit, message), allow_remote=True).html
    return MessageView(message, folder.name, html)


def find_folder(session: Session, account_id: int, name: str) -> Folder | None:
    """A folder of the account by its name (INBOX in any case) or its role (`sent`, `trash`...)."""
    wanted = "INBOX" if name.upper() == "INBOX" else name
    return session.scalars(
        select(Folder)
        .where(Folder.account_id == account_id, or_(Folder.name == wanted, Folder.role == name))
        .order_by(Folder.name == wanted)  # a folder named like a role beats the role
        .limit(1)
    ).first()


def list_messages(
    unit: Unit,
    account_id: int,
    folder_name: str,
    after: tuple[datetime | None, int] | None,
    limit: int,
) -> list[Copy]:
    """A folder's current copies, newest first, keyset-paginated on (date, id).

    The order is ix_messages_folder_date's (date DESC, id DESC), so a page is an index range
    scan; every synced message has a date (the Date header, else the server's internal date).
    Only the summary's columns are read, as rows (no bodies and no ORM objects for a list).
    Two statements: the folder (tenant-bound, so another tenant's account has none), then the
    page; the account is looked up only to tell a missing account from a missing folder.
    """
    folder = find_folder(unit.session, account_id, folder_name)
    if folder is None:
        get_account(unit, account_id)
        raise NotFound(f"Account {account_id} has no folder {folder_name!r}.")
    query = (
        select(*SUMMARY_COLUMNS)
        .where(Message.folder_id == folder.id, Message.uidvalidity == folder.uidvalidity)
        .order_by(Message.date.desc(), Message.id.desc())
        .limit(limit)
    )
    if after is not None:
        query = query.where(date_keyset(*after))
    return [Copy(row, folder.name) for row in unit.session.execute(query)]


def date_keyset(date: datetime | None, message_id: int) -> ColumnElement[bool]:
    """Rows after (date, id) in the order date DESC, id DESC (the date indexes' order).

    DESC puts NULL dates first (as the indexes do): after a dated row only dated rows follow.
    """
    if date is None:
        return or_(and_(Message.date.is_(None), Message.id < message_id), Message.date.isnot(None))
    return tuple_(Message.date, Message.id) < tuple_(date, message_id)


def raw_bytes(unit: Unit, message: Message) -> bytes:
    """Exactly the bytes the server sent."""
    data = unit.session.scalar(select(MessageRaw.data).where(MessageRaw.id == message.raw_id))
    return bytes(data or b"")


def raw_message(unit: Unit, message_id: int) -> bytes:
    """A message exactly as the server sent it."""
    message, _ = get_message(unit, message_id)
    _require_body(message)
    return raw_bytes(unit, message)


def _require_body(message: Message) -> None:
    """A copy stored headers-only has no raw message and no attachments to give."""
    if message.too_large:
        raise Conflict(
            f"Message {message.id} is larger than MAX_MESSAGE_BYTES: only its headers were "
            "stored, not its body."
        )
    if message.over_quota:
        raise Conflict(
            f"Message {message.id} arrived while the storage quota was used up: only its "
            "headers were stored, not its body."
        )


def attachment(unit: Unit, message_id: int, index: int) -> tuple[Attachment, bytes]:
    """One attachment of a message: its metadata and its decoded bytes."""
    message, _ = get_message(unit, message_id)
    _require_body(message)
    found = attachment_content(raw_bytes(unit, message), index)
    if found is None:
        raise NotFound(f"Message {message.id} has no attachment {index}.")
    return found


def request_flags(
    unit: Unit, message: Message, seen: bool | None, flagged: bool | None
) -> MessageChange:
    """Change flags now in our copy; a worker writes them to the server."""
    if seen is None and flagged is None:
        raise ValidationFailed(
            "Nothing to change: give seen and/or flagged.",
            [{"field": "body", "message": "seen or flagged required"}],
        )
    if seen is not None:
        message.seen = seen
    if flagged is not None:
        message.flagged = flagged
    count_folder(unit.session, message.folder_id)  # its unread count, shown at once too
    return _record(unit, message, kind=ChangeKind.FLAGS, seen=seen, flagged=flagged)


def request_move(unit: Unit, message: Message, target: str) -> MessageChange:
    """Move to another folder (a name or a role)."""
    folder = unit.session.get_one(Folder, message.folder_id)
    destination = find_folder(unit.session, message.account_id, target)
    if destination is None:
        raise ValidationFailed(
            f"Account {message.account_id} has no folder {target!r}.",
            [{"field": "folder", "message": "no such folder or role"}],
        )
    if destination.id == folder.id:
        raise ValidationFailed(
            f"Message {message.id} is already in {folder.name}.",
            [{"field": "folder", "message": "the message is already there"}],
        )
    return _record(unit, message, kind=ChangeKind.MOVE, target_folder_id=destination.id)


def request_delete(unit: Unit, message_id: int) -> MessageChange:
    """To Trash; from Trash, for good."""
    message, folder = get_message(unit, message_id)
    if folder.role == FolderRole.TRASH:
        return _record(unit, message, kind=ChangeKind.DELETE)
    trash = find_folder(unit.session, message.account_id, FolderRole.TRASH)
    if trash is None:
        raise Conflict(f"Account {message.account_id} has no Trash folder to delete into.")
    return _record(unit, message, kind=ChangeKind.MOVE, target_folder_id=trash.id)


def _record(unit: Unit, message: Message, **change: Any) -> MessageChange:
    """Store the change, then queue the worker that writes it to the server."""
    row = MessageChange(account_id=message.account_id, message_id=message.id, **change)
    unit.session.add(row)
    unit.commit()
    unit.ctx.jobs.enqueue(APPLY_MESSAGE_CHANGES, row.account_id)
    return row


def apply_changes(ctx: ServiceContext, account_id: int, limit: int = 500) -> int:
    """Write an account's pending changes to its IMAP server, oldest first; how many applied.

    A network failure leaves the remaining changes pending (the job retries them); a change
    that cannot be applied (its folder is gone, its copy is stale) is marked failed.
    """
    sessions = ctx.sessions
    with sessions() as s:
        pending = list(
            s.scalars(
                select(MessageChange.id)
                .where(
                    MessageChange.account_id == account_id,
                    MessageChange.state == ChangeState.PENDING,
                )
                .order_by(MessageChange.id)
                .limit(limit)
            )
        )
        account = s.get(Account, account_id)
    if not pending or account is None:
        return 0
    applied = 0
    with ctx.connector.imap(account) as imap:
        selected: str | None = None
        for change_id in pending:
            with sessions.begin() as s:
                # Locked while it is written to the server: two jobs of one account (the
                # sweep's and the user's) never apply the same change twice.
                change = s.get(MessageChange, change_id, with_for_update={"skip_locked": True})
                if change is None or change.state != ChangeState.PENDING:
                    continue  # another job has it, or had it
                found = s.execute(
                    select(Message, Folder)
                    .join(Folder, Folder.id == Message.folder_id)
                    .where(Message.id == change.message_id)
                ).first()
                if change.message_id is None:
                    _finish(change, ChangeState.FAILED, "the message is gone from the server")
                    continue
                if found is None or found[0].uidvalidity != found[1].uidvalidity:
                    _finish(
                        change, ChangeState.FAILED, "the message changed on the server meanwhile"
                    )
                    continue
                message, folder = found
                try:
                    if selected != folder.remote_name:
                        imap.select(folder.remote_name)
                        selected = folder.remote_name
                    _apply(s, imap, change, message, folder)
                except FolderGone as exc:
                    _finish(change, ChangeState.FAILED, str(exc))
                    continue
                except MailConnectionError as exc:
                    change.attempts += 1
                    change.last_error = str(exc)[:2000]
                    s.commit()
                    raise
                _finish(change, ChangeState.DONE, None)
                applied += 1
    return applied


def run_apply_job(ctx: ServiceContext, account_id: int, attempt: int = 0) -> int:
    """The write-back job: apply the pending changes. A failure of the mail server is retried
    with backoff; one of the database is retried within seconds (and, past the retries, by the
    sweep): a change is written to the server once it is back, either way."""
    try:
        return apply_changes(ctx, account_id)
    except MailConnectionError:
        if attempt >= APPLY_RETRIES:
            raise
        ctx.jobs.enqueue(APPLY_MESSAGE_CHANGES, account_id, attempt + 1, delay=backoff(attempt))
        return 0
    except DEPENDENCY_ERRORS:
        if attempt >= APPLY_RETRIES:
            raise
        log.warning("database unavailable while writing changes back; retrying")
        delay = backoff(attempt, base=2, cap=30)
        ctx.jobs.enqueue(APPLY_MESSAGE_CHANGES, account_id, attempt + 1, delay=delay)
        return 0


def resume_job_id(account_id: int) -> str:
    """The sweep's job of an account: one at a time, however long the queue waits."""
    return f"apply-resume-{account_id}"


def resume_pending(ctx: ServiceContext) -> int:
    """Queue the write-back of every account whose changes lost their job: pending for
    RESUME_AFTER with no failure recorded (a failure has its own retries). Run when a worker
    starts and every minute by the scheduler; how many accounts."""
    since = datetime.now(timezone.utc) - RESUME_AFTER
    with ctx.sessions() as s:
        ids = list(
            s.scalars(
                select(MessageChange.account_id)
                .join(Account, Account.id == MessageChange.account_id)
                .where(
                    MessageChange.state == ChangeState.PENDING,
                    MessageChange.last_error.is_(None),
                    MessageChange.created_at < since,
                    Account.state == AccountState.ACTIVE,
                )
                .distinct()
            )
        )
    resumed = 0
    for account_id in ids:
        job_id = resume_job_id(account_id)
        if ctx.jobs.waiting(job_id):
            continue
        ctx.jobs.enqueue(APPLY_MESSAGE_CHANGES, account_id, job_id=job_id)
        resumed += 1
        log.info("pending message changes resumed", extra={"account_id": account_id})
    return resumed


def _apply(
    s: Session, imap: ImapSession, change: MessageChange, message: Message, folder: Folder
) -> None:
    if change.kind == ChangeKind.FLAGS:
        add: list[bytes] = []
        remove: list[bytes] = []
        for wanted, flag in ((change.seen, b"\\Seen"), (change.flagged, b"\\Flagged")):
            if wanted is not None:
                (add if wanted else remove).append(flag)
        imap.store(message.uid, add, remove)
    elif change.kind == ChangeKind.DELETE:
        imap.expunge(message.uid)
        s.delete(message)
        s.flush()
        count_folder(s, folder.id)
    else:
        target = s.get_one(Folder, change.target_folder_id)
        new_uid = imap.move(message.uid, target.remote_name)
        if new_uid is not None and target.uidvalidity is not None:
            _copy_to(s, message, target, new_uid)
        # Without COPYUID the target's next sync fetches the copy: it is never lost.
        s.delete(message)
        s.flush()
        count_folder(s, folder.id)
        count_folder(s, target.id)


def _copy_to(s: Session, message: Message, target: Folder, uid: int) -> None:
    """The moved message's row in its new folder, under its new UID (no refetch needed)."""
    table = cast(Table, Message.__table__)
    columns = [c for c in table.columns if c.name not in _OWN_COLUMNS and c.computed is None]
    source = select(
        *columns,
        literal(target.id, table.c.folder_id.type),
        literal(target.uidvalidity, table.c.uidvalidity.type),
        literal(uid, table.c.uid.type),
    ).where(table.c.id == message.id)
    s.execute(
        insert(table)
        .from_select([*(c.name for c in columns), "folder_id", "uidvalidity", "uid"], source)
        # The target's sync may have fetched it first: one copy either way.
        .on_conflict_do_nothing(index_elements=["folder_id", "uidvalidity", "uid"])
    )


def _finish(change: MessageChange, state: ChangeState, error: str | None) -> None:
    change.state = state
    change.last_error = error
    change.attempts += 1
    change.applied_at = datetime.now(timezone.utc)
