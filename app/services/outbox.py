"""Delivering outbox entries over SMTP exactly once, and the copy in the Sent folder.

The state machine (app.states.OutboxState): queued -> sending -> sent | failed | uncertain.
- Whoever works on an entry holds its advisory lock (app.db.advisory_lock) on a connection of
  its own; PostgreSQL drops the lock when that process dies, so an entry found `sending` while
  its lock is free was left by a dead worker.
- `sending` is committed before the first byte goes out, and `dot_sent_at` just before the
  final "." of DATA. A dead worker's entry without dot_sent_at never reached the server whole
  (a server discards a message whose "." never came), so it is sent again; with dot_sent_at the
  server may have it, so it becomes `uncertain` and is never sent again without the user.
- Failures before the "." (no connection, 4xx, a connection lost mid-payload) go back to
  `queued` with a later next_attempt_at and exponential backoff with jitter, up to
  max_attempts; a 5xx or refused credentials are `failed` at once.
- After `sent`, the message is APPENDed to the account's Sent folder, once: the folder is
  searched for its Message-ID first, so a retry after a lost APPEND reply adds no second copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, or_, select

from app.context import ServiceContext, Unit
from app.db import advisory_lock
from app.errors import Conflict, NotFound
from app.jobs import FILE_SENT_COPY, SEND_MESSAGE, backoff
from app.mail import MailAuthError, MailConnectionError, MailError
from app.mail.imap import ImapSession
from app.mail.smtp import SendDeferred, SendRejected, SendUncertain
from app.models import Account, Folder, OutboxEntry
from app.states import FolderRole, OutboxState, Resolution, SentCopy

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 0x534E  # "SN"
COPY_ATTEMPTS = 8
SENT_FOLDER = "Sent"  # created when an account has no folder with the sent role
# A queued entry this far past its time has lost its job (Redis lost it, say): the sweeper
# enqueues it again. Duplicates are harmless: the lock and the state decide.
OVERDUE = timedelta(minutes=2)
DIED_SENDING = (
    "the worker stopped after the whole message was sent and before the server's reply: "
    "the server may have accepted it, so it is not sent again automatically"
)


def lock_key(outbox_id: int) -> int:
    return (LOCK_NAMESPACE << 32) | outbox_id


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """base, 2 base, 4 base ... (attempt counts from 1), capped at an hour, +-50% jitter."""
        return backoff(attempt - 1, self.base_seconds)


@dataclass(frozen=True)
class Outcome:
    state: str  # the entry's state afterwards, or "busy" (another worker holds it)
    retry_in: float | None = None  # seconds: enqueue another attempt then
    copy: bool = False  # enqueue the Sent copy
    attempted: bool = False  # this call spoke SMTP (for the metrics)


class Deliverer:
    """Sends outbox entries and files their Sent copies (worker side: no tenant binding)."""

    def __init__(self, ctx: ServiceContext, policy: RetryPolicy | None = None) -> None:
        self.ctx = ctx
        self.sessions = ctx.sessions
        self.policy = policy or RetryPolicy(
            ctx.settings.send_max_attempts, ctx.settings.send_retry_seconds
        )

    def deliver(self, outbox_id: int) -> Outcome:
        """One attempt at an entry; safe to run twice, concurrently, or after a crash."""
        with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
            if not locked:
                return Outcome("busy")
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if entry is None:
                    return Outcome("gone")
                if entry.state == OutboxState.SENDING:
                    _settle_dead(entry, self.policy)  # its worker died: we hold the lock
                if entry.state != OutboxState.QUEUED:
                    return Outcome(entry.state, copy=entry.sent_copy == SentCopy.PENDING)
                entry.state, entry.dot_sent_at = OutboxState.SENDING, None
                entry.attempts += 1
                entry.updated_at = _now()
                account = s.get_one(Account, entry.account_id)
                sender, recipients = entry.envelope_from, list(entry.recipients)
                mime, attempts = entry.mime, entry.attempts
            # `sending` is committed: from here a crash is settled by _settle_dead.
            try:
                reply = self.ctx.connector.submit(
                    account, sender, recipients, mime, before_dot=lambda: self._mark_dot(outbox_id)
                )
            except SendUncertain as exc:
                return self._finish(outbox_id, OutboxState.UNCERTAIN, str(exc))
            except (SendRejected, MailAuthError) as exc:
                return self._finish(outbox_id, OutboxState.FAILED, str(exc))
            except (SendDeferred, MailConnectionError) as exc:
                if attempts >= self.policy.max_attempts:
                    return self._finish(
                        outbox_id, OutboxState.FAILED, f"gave up after {attempts} attempts: {exc}"
                    )
                return self._retry(outbox_id, str(exc), self.policy.delay(attempts))
            except BaseException:
                # A bug or a signal mid-send: settle as a dead worker would be, then re-raise.
                with self.sessions.begin() as s:
                    entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                    _settle_dead(entry, self.policy)
                    if entry.state == OutboxState.QUEUED:
                        entry.next_attempt_at = _now() + timedelta(
                            seconds=self.policy.delay(attempts)
                        )
                raise
            return self._finish(outbox_id, OutboxState.SENT, None, reply=reply)

    def _mark_dot(self, outbox_id: int) -> None:
        with self.sessions.begin() as s:
            s.get_one(OutboxEntry, outbox_id).dot_sent_at = _now()

    def _finish(
        self, outbox_id: int, state: OutboxState, error: str | None, reply: str | None = None
    ) -> Outcome:
        with self.sessions.begin() as s:
            entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
            entry.state, entry.last_error, entry.updated_at = state, error, _now()
            entry.next_attempt_at = None
            if state == OutboxState.SENT:
                entry.sent_at, entry.smtp_reply = _now(), reply
                entry.sent_copy = SentCopy.PENDING
        log.info(
            "outbox entry settled",
            extra={"outbox_id": outbox_id, "state": state, "error": error},
        )
        return Outcome(state, copy=state == OutboxState.SENT, attempted=True)

    def _retry(self, outbox_id: int, error: str, delay: float) -> Outcome:
        with self.sessions.begin() as s:
            entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
            entry.state, entry.last_error, entry.dot_sent_at = OutboxState.QUEUED, error, None
            entry.next_attempt_at = _now() + timedelta(seconds=delay)
            entry.updated_at = _now()
        log.warning(
            "send deferred",
            extra={"outbox_id": outbox_id, "delay": round(delay, 1), "error": error},
        )
        return Outcome(OutboxState.QUEUED, retry_in=delay, attempted=True)

    # -- the Sent copy -------------------------------------------------------------------

    def file_sent_copy(self, outbox_id: int) -> Outcome:
        """APPEND the sent message to the account's Sent folder, unless it is there already."""
        with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
            if not locked:
                return Outcome("busy")
            with self.sessions() as s:
                entry = s.get(OutboxEntry, outbox_id)
                if entry is None or entry.sent_copy != SentCopy.PENDING:
                    return Outcome(entry.sent_copy if entry else "gone")
                account = s.get_one(Account, entry.account_id)
                known = s.scalars(
                    select(Folder.name).where(
                        Folder.account_id == account.id, Folder.role == FolderRole.SENT
                    )
                ).first()
                mime, message_id, when = entry.mime, entry.message_id, entry.sent_at
            try:
                with self.ctx.connector.imap(account) as session:
                    folder = _sent_folder(session, known)
                    if not session.has_message_id(folder, message_id):
                        session.append(folder, mime, [b"\\Seen"], when or _now())
            except MailError as exc:
                return self._copy_failed(outbox_id, str(exc))
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                entry.sent_copy, entry.sent_copy_error = SentCopy.DONE, None
                entry.next_attempt_at = None
                entry.updated_at = _now()
            return Outcome("done")

    def _copy_failed(self, outbox_id: int, error: str) -> Outcome:
        with self.sessions.begin() as s:
            entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
            entry.sent_copy_attempts += 1
            entry.sent_copy_error = error
            entry.updated_at = _now()
            if entry.sent_copy_attempts >= COPY_ATTEMPTS:
                entry.sent_copy = SentCopy.FAILED
                return Outcome("failed")
            delay = self.policy.delay(entry.sent_copy_attempts)
            entry.next_attempt_at = _now() + timedelta(seconds=delay)
        log.warning("sent copy deferred", extra={"outbox_id": outbox_id, "error": error})
        return Outcome("pending", retry_in=delay)

    # -- recovery ------------------------------------------------------------------------

    def sweep(self) -> tuple[list[int], list[int]]:
        """Settle entries whose worker died, and find work whose job was lost.

        Returns (entries to send, entries whose Sent copy to file). Run when workers start
        and periodically by the scheduler.
        """
        now = _now()
        with self.sessions() as s:
            rows = s.execute(
                select(OutboxEntry.id, OutboxEntry.state, OutboxEntry.sent_copy).where(
                    or_(
                        OutboxEntry.state == OutboxState.SENDING,
                        (OutboxEntry.state == OutboxState.QUEUED)
                        & (OutboxEntry.next_attempt_at < now - OVERDUE),
                        (OutboxEntry.state == OutboxState.SENT)
                        & (OutboxEntry.sent_copy == SentCopy.PENDING)
                        & (
                            func.coalesce(OutboxEntry.next_attempt_at, OutboxEntry.updated_at)
                            < now - OVERDUE
                        ),
                    )
                )
            ).all()
        send, copy = [], []
        for outbox_id, state, _ in rows:
            if state == OutboxState.SENT:
                copy.append(outbox_id)
                continue
            if state == OutboxState.SENDING and not self._settle_if_dead(outbox_id):
                continue  # a live worker is sending it
            send.append(outbox_id)
        return send, copy

    def _settle_if_dead(self, outbox_id: int) -> bool:
        """Settle a `sending` entry nobody holds; True when it is queued again."""
        with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
            if not locked:
                return False
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if entry.state == OutboxState.SENDING:
                    _settle_dead(entry, self.policy)
                return entry.state == OutboxState.QUEUED


def _settle_dead(entry: OutboxEntry, policy: RetryPolicy) -> None:
    """A `sending` entry whose worker is gone: uncertain if its "." may have gone out, else
    queued again (failed once its attempts are used up: a message that kills its worker
    every time must not be tried forever)."""
    if entry.dot_sent_at is not None:
        entry.state, entry.last_error = OutboxState.UNCERTAIN, DIED_SENDING
    elif entry.attempts >= policy.max_attempts:
        entry.state = OutboxState.FAILED
        entry.last_error = (
            f"gave up after {entry.attempts} attempts: the worker stopped before the message "
            "was complete"
        )
    else:
        entry.state = OutboxState.QUEUED
        entry.last_error = "the worker stopped before the message was complete; sending again"
    entry.updated_at = _now()
    log.warning("outbox entry left sending", extra={"outbox_id": entry.id, "state": entry.state})


def _sent_folder(session: ImapSession, known: str | None) -> str:
    """The remote name of the Sent folder: by role (RFC 6154), else "Sent", created if needed."""
    folders = session.folders()
    for wanted in (known, None):
        for folder in folders:
            if (wanted is not None and folder.name == wanted) or (
                wanted is None and folder.role == FolderRole.SENT
            ):
                return folder.remote_name
    if not any(f.name == SENT_FOLDER for f in folders):
        session.create(SENT_FOLDER)
    return SENT_FOLDER


# -- the jobs --------------------------------------------------------------------------------


def send(ctx: ServiceContext, outbox_id: int) -> str:
    """The send job: one delivery attempt; schedules its retry or its Sent copy."""
    outcome = Deliverer(ctx).deliver(outbox_id)
    if outcome.attempted:
        ctx.counters.count_send("deferred" if outcome.retry_in is not None else outcome.state)
    if outcome.retry_in is not None:
        ctx.jobs.enqueue(SEND_MESSAGE, outbox_id, delay=outcome.retry_in)
    if outcome.copy:
        ctx.jobs.enqueue(FILE_SENT_COPY, outbox_id)
    return outcome.state


def file_copy(ctx: ServiceContext, outbox_id: int) -> str:
    """The Sent-copy job: APPEND the sent message (once); retried on failure."""
    outcome = Deliverer(ctx).file_sent_copy(outbox_id)
    if outcome.retry_in is not None:
        ctx.jobs.enqueue(FILE_SENT_COPY, outbox_id, delay=outcome.retry_in)
    return outcome.state


def recover(ctx: ServiceContext) -> int:
    """Settle sends whose worker died and queue work whose job was lost; how many queued."""
    send_ids, copy_ids = Deliverer(ctx).sweep()
    for outbox_id in send_ids:
        ctx.jobs.enqueue(SEND_MESSAGE, outbox_id)
    for outbox_id in copy_ids:
        ctx.jobs.enqueue(FILE_SENT_COPY, outbox_id)
    return len(send_ids) + len(copy_ids)


# -- the API's side -------------------------------------------------------------------------


def get_entry(unit: Unit, outbox_id: int) -> OutboxEntry:
    entry = unit.session.scalars(select(OutboxEntry).where(OutboxEntry.id == outbox_id)).first()
    if entry is None:
        raise NotFound(f"Outbox entry {outbox_id} does not exist.")
    return entry


def list_entries(
    unit: Unit, state: OutboxState | None, after_id: int | None, limit: int
) -> list[OutboxEntry]:
    """Newest first, keyset-paginated on id."""
    query = select(OutboxEntry).order_by(OutboxEntry.id.desc()).limit(limit)
    if state is not None:
        query = query.where(OutboxEntry.state == state)
    if after_id is not None:
        query = query.where(OutboxEntry.id < after_id)
    return list(unit.session.scalars(query))


def resolve(unit: Unit, outbox_id: int, outcome: Resolution) -> OutboxEntry:
    """The user settles an entry: an uncertain one as sent or failed, or sends one again."""
    entry = unit.session.scalars(
        select(OutboxEntry).where(OutboxEntry.id == outbox_id).with_for_update()
    ).first()
    if entry is None:
        raise NotFound(f"Outbox entry {outbox_id} does not exist.")
    allowed = (
        (OutboxState.UNCERTAIN, OutboxState.FAILED)
        if outcome == Resolution.RETRY
        else (OutboxState.UNCERTAIN,)
    )
    if entry.state not in allowed:
        raise Conflict(
            f"Outbox entry {entry.id} is {entry.state}: only "
            f"{' or '.join(allowed)} entries can be resolved as {outcome}."
        )
    entry.resolved_by = "user"
    entry.updated_at = _now()
    if outcome == Resolution.RETRY:
        entry.state, entry.dot_sent_at, entry.next_attempt_at = OutboxState.QUEUED, None, _now()
    elif outcome == Resolution.SENT:
        entry.state = OutboxState.SENT
        entry.sent_at, entry.sent_copy = entry.sent_at or _now(), SentCopy.PENDING
    else:
        entry.state = OutboxState.FAILED
    unit.commit()
    if entry.state == OutboxState.QUEUED:
        unit.ctx.jobs.enqueue(SEND_MESSAGE, entry.id)
    elif entry.sent_copy == SentCopy.PENDING:
        unit.ctx.jobs.enqueue(FILE_SENT_COPY, entry.id)
    return entry


def _now() -> datetime:
    return datetime.now(timezone.utc)
