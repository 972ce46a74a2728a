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
- The server's acceptance (its 250 after the ".") is a fact only the sending worker holds:
  recording it (and any other outcome) is retried through a database outage, with backoff,
  for as long as the job's timeout allows. Should the database stay away longer, the worker
  writes the fact to Redis (ACCEPTED_KEY) and the sweep settles the entry as `sent` from it,
  so a delivered message never ends `uncertain` for want of a database.
- After `sent`, the message is APPENDed to the account's Sent folder, once: the folder is
  searched for its Message-ID first, so a retry after a lost APPEND reply adds no second copy.
  Copies are filed per account in batches, a second after the send: one login, one SEARCH and
  one MULTIAPPEND for every copy of the account that is due.
- A worker keeps its SMTP session with an account's server from one message to the next
  (app.mail.smtp.SessionPool): the next message starts with RSET; a session found dead
  before the message's "." is replaced by a fresh one for the same attempt (nothing of the
  message was committed on it), never after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import undefer

from app.context import DEPENDENCY_ERRORS, ServiceContext, Unit
from app.db import advisory_lock
from app.errors import Conflict, NotFound
from app.jobs import FILE_SENT_COPY, SEND_MESSAGE, WAITING_STATES, JobSpec, backoff
from app.mail import MailAuthError, MailConnectionError, MailError
from app.mail.imap import ImapSession
from app.mail.smtp import SendDeferred, SendRejected, SendUncertain, SessionPool
from app.models import Account, Folder, OutboxEntry
from app.states import FolderRole, OutboxState, Resolution, SentCopy

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 0x534E  # "SN"
COPY_LOCK_NAMESPACE = 0x5343  # "SC": one worker files an account's Sent copies at a time
COPY_ATTEMPTS = 8
# A batch of Sent copies: at most this many messages and bytes (one at least) per APPEND.
COPY_BATCH = 50
COPY_BATCH_BYTES = 16 * 1024 * 1024
# A copy job files batches for this long at most, then leaves the rest to its next job.
COPY_JOB_SECONDS = 300.0
# A copy job whose account's copies another worker is filing comes back after this long.
COPY_BUSY_SECONDS = 2.0
# The Sent copy is filed this long after the send, so that copies of a burst of sends
# gather into one batch (one login) instead of a login each.
COPY_DELAY_SECONDS = 1.0
SENT_FOLDER = "Sent"  # created when an account has no folder with the sent role
# A queued entry this far past its time has lost its job (Redis lost it, say): the sweeper
# enqueues it again. Duplicates are harmless: the lock and the state decide.
OVERDUE = timedelta(minutes=2)
# A queued entry this far past its time whose job RQ does not know is enqueued again.
MISSING_AFTER = timedelta(seconds=15)
# What a settled-as-dead entry became while its worker, cut off from the database, was in
# fact receiving the server's 250: its acceptance overrides these.
SETTLED_AS_DEAD = (OutboxState.UNCERTAIN, OutboxState.QUEUED)
# Enqueues after an API request's commit: tried this often (0.2 s, 0.4 s apart) before the
# request answers anyway and leaves the job to the sweep.
ENQUEUE_TRIES = 3
# Acceptances the worker could not record in the database: outbox id -> the server's reply.
ACCEPTED_KEY = "emailservice:outbox:accepted"
ACCEPTED_TTL = 30 * 86400  # seconds; renewed on every write, far beyond any outage
# Recording an outcome is retried until this long before the send job's timeout (RQ kills the
# work-horse at the timeout, and the fact must be written somewhere before that).
RECORD_MARGIN = 60.0
# Marking the "." is retried this long: the SMTP server waits for the "." meanwhile.
MARK_DOT_SECONDS = 60.0
# A send job that sent its message goes on with its account's further due entries on the
# same session: this many at most, each started within this many seconds of the job's start.
SEND_BATCH = 20
SEND_BATCH_SECONDS = 5.0
DIED_SENDING = (
    "the worker stopped after the whole message was sent and before the server's reply: "
    "the server may have accepted it, so it is not sent again automatically"
)


class LostEntry(Exception):
    """The entry this worker was sending was settled by someone else meanwhile."""


def retrying(what: str, action: Callable[[], bool | None], deadline: float, outbox_id: int) -> bool:
    """Run `action` until it gets past a dependency outage or `deadline` (time.monotonic())
    passes; True when it ran. Backoff from 0.25 s up to 5 s; one log line per outage."""
    delay, warned = 0.25, False
    while True:
        try:
            action()
        except DEPENDENCY_ERRORS as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error(
                    "%s: gave up, a dependency stayed unavailable",
                    what,
                    extra={"outbox_id": outbox_id, "error": type(exc).__name__},
                )
                return False
            if not warned:
                log.warning(
                    "%s: a dependency is unavailable, retrying",
                    what,
                    extra={"outbox_id": outbox_id, "error": type(exc).__name__},
                )
                warned = True
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)
            continue
        if warned:
            log.info("%s: done after the outage", what, extra={"outbox_id": outbox_id})
        return True


def enqueue_or_sweep(
    ctx: ServiceContext,
    spec: JobSpec,
    outbox_id: int,
    delay: float = 0,
    job_id: str | None = None,
    tries: int = 1,
    tenant_id: int | None = None,
) -> bool:
    """Enqueue a job of an entry whose state is committed, `tries` times with short pauses;
    when Redis stays down, log it and leave the entry to the sweep (which queues due work
    that has no job). True if enqueued. `tenant_id`: the entry's, when the caller has it."""
    for attempt in range(tries):
        try:
            ctx.jobs.enqueue(spec, outbox_id, delay=delay, job_id=job_id, tenant_id=tenant_id)
            return True
        except DEPENDENCY_ERRORS as exc:
            error = type(exc).__name__
            if attempt + 1 < tries:
                time.sleep(0.2 * 2**attempt)
    log.warning(
        "could not enqueue; the outbox sweep will",
        extra={"outbox_id": outbox_id, "job": spec.func, "error": error},
    )
    return False


def lock_key(outbox_id: int) -> int:
    return (LOCK_NAMESPACE << 32) | outbox_id


def copy_lock_key(account_id: int) -> int:
    return (COPY_LOCK_NAMESPACE << 32) | account_id


@dataclass(frozen=True)
class PendingCopy:
    outbox_id: int
    message_id: str
    mime: bytes
    sent_at: datetime | None


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

    def __init__(
        self,
        ctx: ServiceContext,
        policy: RetryPolicy | None = None,
        record_seconds: float = SEND_MESSAGE.timeout - RECORD_MARGIN,
        pool: SessionPool | None = None,
    ) -> None:
        self.ctx = ctx
        # SMTP sessions kept from one message to the next (a send worker's, see `send`).
        self.pool = pool
        self.sessions = ctx.sessions
        self.policy = policy or RetryPolicy(
            ctx.settings.send_max_attempts, ctx.settings.send_retry_seconds
        )
        # How long after the attempt starts its outcome may still be recorded (retried).
        self.record_seconds = record_seconds

    def deliver(self, outbox_id: int) -> Outcome:
        """One attempt at an entry; safe to run twice, concurrently, or after a crash."""
        deadline = time.monotonic() + self.record_seconds
        outcome: Outcome | None = None
        try:
            with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
                outcome = self._deliver(outbox_id, locked, deadline)
        except DEPENDENCY_ERRORS:
            if outcome is None:
                raise
            # Releasing the lock failed with its connection: PostgreSQL dropped it already.
        return outcome

    def _deliver(self, outbox_id: int, locked: bool, deadline: float) -> Outcome:
        if not locked:
            return Outcome("busy")
        with self.sessions.begin() as s:
            # The entry, locked, with its message (deferred elsewhere) and its account: one
            # round trip.
            found = s.execute(
                select(OutboxEntry, Account)
                .options(undefer(OutboxEntry.mime))
                .join(Account, Account.id == OutboxEntry.account_id)
                .where(OutboxEntry.id == outbox_id)
                .with_for_update(of=OutboxEntry)
            ).first()
            if found is None:
                return Outcome("gone")
            entry, account = found
            if entry.state == OutboxState.SENDING:
                self._settle_dead(entry)  # its worker died: we hold the lock
            if entry.state != OutboxState.QUEUED:
                return Outcome(entry.state, copy=entry.sent_copy == SentCopy.PENDING)
            entry.state, entry.dot_sent_at = OutboxState.SENDING, None
            entry.attempts += 1
            entry.updated_at = _now()
            sender, recipients = entry.envelope_from, list(entry.recipients)
            mime, attempts = entry.mime, entry.attempts
        # `sending` is committed: from here a crash is settled by _settle_dead.
        try:
            reply = self.ctx.connector.submit(
                account,
                sender,
                recipients,
                mime,
                before_dot=lambda: self._mark_dot(outbox_id, attempts),
                pool=self.pool,
            )
        except LostEntry as exc:
            # Cut off from the database, this worker lost its lock and a sweep settled the
            # entry; the "." was not sent, so the server discards this copy.
            log.warning(
                "send abandoned before the final dot: %s", exc, extra={"outbox_id": outbox_id}
            )
            return Outcome("lost", attempted=True)
        except SendUncertain as exc:
            return self._finish(outbox_id, attempts, OutboxState.UNCERTAIN, str(exc), deadline)
        except (SendRejected, MailAuthError) as exc:
            return self._finish(outbox_id, attempts, OutboxState.FAILED, str(exc), deadline)
        except (SendDeferred, MailConnectionError) as exc:
            if attempts >= self.policy.max_attempts:
                error = f"gave up after {attempts} attempts: {exc}"
                return self._finish(outbox_id, attempts, OutboxState.FAILED, error, deadline)
            return self._retry(outbox_id, attempts, str(exc), self.policy.delay(attempts), deadline)
        except BaseException:
            # A bug or a signal mid-send: settle as a dead worker would be, then re-raise.
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if (entry.state, entry.attempts) != (OutboxState.SENDING, attempts):
                    raise  # settled by someone else meanwhile: not ours to settle
                self._settle_dead(entry)
                if entry.state == OutboxState.QUEUED:
                    entry.next_attempt_at = _now() + timedelta(seconds=self.policy.delay(attempts))
            raise
        return self._finish(outbox_id, attempts, OutboxState.SENT, None, deadline, reply=reply)

    def _mark_dot(self, outbox_id: int, attempts: int) -> None:
        """Commit dot_sent_at; retried through a short outage (the server waits for the ".").
        Raises (and the "." is never sent) if the database stays away, or if the entry is no
        longer this attempt's `sending` one: while the database was away the advisory lock
        went with its connection, and a sweep may have queued the entry again for another
        worker, which must then be the only one to send it."""

        def mark() -> None:
            # One conditional UPDATE (it locks the row as a SELECT .. FOR UPDATE would): the
            # SMTP server waits meanwhile, so no read before it.
            with self.sessions.begin() as s:
                marked = s.scalar(
                    update(OutboxEntry)
                    .where(
                        OutboxEntry.id == outbox_id,
                        OutboxEntry.state == OutboxState.SENDING,
                        OutboxEntry.attempts == attempts,
                    )
                    .values(dot_sent_at=_now())
                    .returning(OutboxEntry.id)
                )
                if marked is None:
                    found = s.execute(
                        select(OutboxEntry.state, OutboxEntry.attempts).where(
                            OutboxEntry.id == outbox_id
                        )
                    ).first()
                    if found is None:
                        raise LostEntry("the entry is gone")
                    raise LostEntry(f"the entry is {found[0]} at attempt {found[1]}")

        if not retrying(
            "marking the final dot", mark, time.monotonic() + MARK_DOT_SECONDS, outbox_id
        ):
            mark()  # one last try: its error aborts the session before the "."

    def _finish(
        self,
        outbox_id: int,
        attempts: int,
        state: OutboxState,
        error: str | None,
        deadline: float,
        reply: str | None = None,
    ) -> Outcome:
        """Record the attempt's outcome, retried through a database outage until `deadline`.

        `attempts` fences the write (a new attempt the user asked for is not overwritten). An
        entry settled meanwhile by a sweep that thought this worker dead (its lock went with
        the database connection) gets the worker's outcome: the sweep only guessed. The
        server's acceptance overrides a user's retry too (sending again would duplicate)."""

        def record() -> None:
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if entry.attempts != attempts:
                    return  # another attempt started: the user asked to send it again
                if state == OutboxState.SENT:
                    if entry.state not in SETTLED_AS_DEAD and entry.state != OutboxState.SENDING:
                        return  # settled by the user as failed (or sent): theirs
                    entry.sent_at, entry.smtp_reply = _now(), reply
                    entry.sent_copy = SentCopy.PENDING
                elif entry.state != OutboxState.SENDING and not (
                    entry.state in SETTLED_AS_DEAD and entry.resolved_by is None
                ):
                    return  # settled by the user meanwhile: theirs
                # Over a sweep's guess too: this worker knows what the server said.
                entry.state, entry.last_error, entry.updated_at = state, error, _now()
                entry.next_attempt_at = None

        if not retrying("recording the outcome of a send", record, deadline, outbox_id):
            if state == OutboxState.SENT and reply is not None:
                self._remember_accepted(outbox_id, attempts, reply)
            return Outcome(state, attempted=True)
        log.info(
            "outbox entry settled",
            extra={"outbox_id": outbox_id, "state": state, "error": error},
        )
        return Outcome(state, copy=state == OutboxState.SENT, attempted=True)

    def _remember_accepted(self, outbox_id: int, attempts: int, reply: str) -> None:
        """The database stayed away past the deadline: keep the acceptance in Redis, where
        the sweep finds it and settles the entry as sent."""
        try:
            with self.ctx.redis.pipeline() as pipe:
                pipe.hset(ACCEPTED_KEY, str(outbox_id), f"{attempts} {reply}")
                pipe.expire(ACCEPTED_KEY, ACCEPTED_TTL)
                pipe.execute()
        except DEPENDENCY_ERRORS:
            # Nowhere left to write it but the log: a person settles the entry from it.
            log.error(
                "the server accepted the message but neither PostgreSQL nor Redis can record "
                "it: resolve the entry as sent",
                extra={"outbox_id": outbox_id, "reply": reply},
            )
            return
        log.warning(
            "server's acceptance kept in Redis for the sweep", extra={"outbox_id": outbox_id}
        )

    def _retry(
        self, outbox_id: int, attempts: int, error: str, delay: float, deadline: float
    ) -> Outcome:
        def record() -> None:
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if entry.attempts != attempts or entry.state != OutboxState.SENDING:
                    return
                entry.state, entry.last_error, entry.dot_sent_at = OutboxState.QUEUED, error, None
                entry.next_attempt_at = _now() + timedelta(seconds=delay)
                entry.updated_at = _now()

        # Not recorded: the entry stays `sending` without its "." and the sweep queues it.
        retrying("recording a deferred send", record, deadline, outbox_id)
        log.warning(
            "send deferred",
            extra={"outbox_id": outbox_id, "delay": round(delay, 1), "error": error},
        )
        return Outcome(OutboxState.QUEUED, retry_in=delay, attempted=True)

    def _accepted(self, outbox_id: int) -> tuple[int, str] | None:
        """The acceptance a worker kept in Redis for this entry: (attempt, reply), or None."""
        raw = self.ctx.redis.hget(ACCEPTED_KEY, str(outbox_id))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        attempt, _, reply = text.partition(" ")
        return int(attempt), reply

    def _settle_dead(self, entry: OutboxEntry) -> None:
        """A `sending` entry whose worker is gone: `sent` if the worker kept the server's
        acceptance in Redis, else as _settle_dead decides."""
        try:
            accepted = self._accepted(entry.id)
        except DEPENDENCY_ERRORS:
            accepted = None  # Redis down: the sweep looks again; uncertain is no loss
        if accepted is not None and accepted[0] == entry.attempts:
            _settle_accepted(entry, accepted[1])
        else:
            _settle_dead(entry, self.policy)

    # -- the Sent copy -------------------------------------------------------------------

    def file_sent_copy(self, outbox_id: int) -> Outcome:
        """File the Sent copy of this entry, and of every other entry of its account whose
        copy is due, on one IMAP login (app.mail.imap.ImapSession.append_many); the outcome
        for this entry. One account's copies are filed by one worker at a time (an advisory
        lock of the account): a job finding it taken comes back shortly, by when its copy
        has usually been filed by the holder.

        A copy counts as filed once `sent_copy` is `done`, committed after the server
        acknowledged its APPEND. A worker that dies in between leaves copies pending that
        are in the folder already: every batch first searches the folder for its
        Message-IDs, so none is filed twice."""
        with self.sessions() as s:
            row = s.execute(
                select(OutboxEntry.account_id, OutboxEntry.sent_copy).where(
                    OutboxEntry.id == outbox_id
                )
            ).first()
        if row is None:
            return Outcome("gone")
        account_id, copy = row
        if copy != SentCopy.PENDING:
            return Outcome(copy)
        with advisory_lock(self.ctx.engine, copy_lock_key(account_id)) as locked:
            if not locked:
                return Outcome("busy", retry_in=COPY_BUSY_SECONDS)
            return self._file_copies(account_id, outbox_id)

    def _file_copies(self, account_id: int, wanted: int) -> Outcome:
        """Batches of the account's due copies, `wanted` first, on one login, until none is
        left or COPY_JOB_SECONDS have passed (then the job is enqueued again)."""
        deadline = time.monotonic() + COPY_JOB_SECONDS
        with self.sessions() as s:
            account = s.get_one(Account, account_id)
            known = s.scalars(
                select(Folder.name).where(
                    Folder.account_id == account.id, Folder.role == FolderRole.SENT
                )
            ).first()
        batch = self._due_copies(account_id, wanted)
        if not batch:
            return Outcome(self._copy_state(wanted))
        filed = 0
        try:
            with self.ctx.connector.imap(account) as session:
                folder = _sent_folder(session, known)
                while batch:
                    present = session.message_ids_in(folder, [c.message_id for c in batch])
                    session.append_many(
                        folder,
                        [
                            (c.mime, [b"\\Seen"], c.sent_at or _now())
                            for c in batch
                            if c.message_id not in present
                        ],
                    )
                    self._copies_done([c.outbox_id for c in batch])
                    filed += len(batch)
                    if time.monotonic() > deadline:
                        break
                    batch = self._due_copies(account_id, None)
        except MailError as exc:
            outcome = None
            for copy in batch:
                failed = self._copy_failed(copy.outbox_id, str(exc))
                if copy.outbox_id == wanted:
                    outcome = failed
            return outcome or Outcome(self._copy_state(wanted))
        log.info("sent copies filed", extra={"account_id": account_id, "count": filed})
        # Some left for the next job (the deadline passed), or this entry's is done.
        state = self._copy_state(wanted)
        return Outcome(state, retry_in=0.0 if batch else None)

    def _due_copies(self, account_id: int, wanted: int | None) -> list[PendingCopy]:
        """The next batch of the account's pending copies: `wanted` (due or not), then the
        due ones, oldest first, at most COPY_BATCH of them and COPY_BATCH_BYTES (at least
        one)."""
        pending = (OutboxEntry.account_id == account_id) & (
            OutboxEntry.sent_copy == SentCopy.PENDING
        )
        due = or_(OutboxEntry.next_attempt_at.is_(None), OutboxEntry.next_attempt_at <= _now())
        if wanted is not None:
            due = or_(due, OutboxEntry.id == wanted)
        order = ((OutboxEntry.id == wanted).desc(), OutboxEntry.id)
        # The running total of the sizes in the batch's order (the size alone reads no mail:
        # PostgreSQL knows a stored value's length), so only the chosen rows' mail is read.
        candidates = (
            select(
                OutboxEntry.id,
                func.sum(func.octet_length(OutboxEntry.mime)).over(order_by=order).label("total"),
                func.row_number().over(order_by=order).label("position"),
            )
            .where(pending & due)
            .order_by(*order)
            .limit(COPY_BATCH)
            .subquery()
        )
        with self.sessions() as s:
            rows = s.execute(
                select(
                    OutboxEntry.id, OutboxEntry.message_id, OutboxEntry.mime, OutboxEntry.sent_at
                )
                .join(candidates, candidates.c.id == OutboxEntry.id)
                .where(
                    or_(
                        candidates.c.position == 1,
                        func.coalesce(candidates.c.total, 0) <= COPY_BATCH_BYTES,
                    )
                )
                .order_by(OutboxEntry.id)
            ).all()
        return [PendingCopy(*row) for row in rows]

    def _copies_done(self, outbox_ids: list[int]) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_(outbox_ids), OutboxEntry.sent_copy == SentCopy.PENDING)
                .values(
                    sent_copy=SentCopy.DONE,
                    sent_copy_error=None,
                    next_attempt_at=None,
                    updated_at=_now(),
                )
            )

    def _copy_state(self, outbox_id: int) -> str:
        with self.sessions() as s:
            state = s.scalar(select(OutboxEntry.sent_copy).where(OutboxEntry.id == outbox_id))
        return str(state) if state is not None else "gone"

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
        and periodically by the scheduler. A queued entry is due again when its time passed
        MISSING_AFTER ago and RQ has no waiting or running job for its attempt (Redis was down
        when it was to be enqueued, or lost it); OVERDUE catches the rest.
        """
        now = _now()
        copy = self._settle_accepted_facts()
        with self.sessions() as s:
            rows = s.execute(
                select(
                    OutboxEntry.id,
                    OutboxEntry.state,
                    OutboxEntry.attempts,
                    OutboxEntry.next_attempt_at,
                ).where(
                    or_(
                        OutboxEntry.state == OutboxState.SENDING,
                        (OutboxEntry.state == OutboxState.QUEUED)
                        & (OutboxEntry.next_attempt_at < now - MISSING_AFTER),
                        (OutboxEntry.state == OutboxState.SENT)
                        & (OutboxEntry.sent_copy == SentCopy.PENDING)
                        & (
                            func.coalesce(OutboxEntry.next_attempt_at, OutboxEntry.updated_at)
                            < now - OVERDUE
                        ),
                    )
                )
            ).all()
        send = []
        for outbox_id, state, attempts, due in rows:
            if state == OutboxState.SENT:
                if outbox_id not in copy:
                    copy.append(outbox_id)
                continue
            if state == OutboxState.SENDING and not self._settle_if_dead(outbox_id):
                continue  # a live worker is sending it
            if (
                state == OutboxState.QUEUED
                and due is not None
                and due >= now - OVERDUE
                and not job_missing(self.ctx, outbox_id, attempts, due)
            ):
                continue  # its job waits (a busy queue)
            send.append(outbox_id)
        return send, copy

    def _settle_accepted_facts(self) -> list[int]:
        """Settle as sent the entries whose acceptance a worker kept in Redis; their ids."""
        raw: dict[bytes, bytes] = self.ctx.redis.hgetall(ACCEPTED_KEY)  # type: ignore[assignment]
        settled = []
        for key in raw:
            outbox_id = int(key)
            with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
                if not locked:
                    continue  # its worker still holds it: it records the outcome itself
                accepted = self._accepted(outbox_id)
                with self.sessions.begin() as s:
                    entry = s.get(OutboxEntry, outbox_id, with_for_update=True)
                    if (
                        entry is not None
                        and accepted is not None
                        and entry.attempts == accepted[0]
                        and entry.state in (OutboxState.SENDING, *SETTLED_AS_DEAD)
                    ):
                        _settle_accepted(entry, accepted[1])
                        settled.append(outbox_id)
                self.ctx.redis.hdel(ACCEPTED_KEY, str(outbox_id))
        return settled

    def _settle_if_dead(self, outbox_id: int) -> bool:
        """Settle a `sending` entry nobody holds; True when it is queued again."""
        with advisory_lock(self.ctx.engine, lock_key(outbox_id)) as locked:
            if not locked:
                return False
            with self.sessions.begin() as s:
                entry = s.get_one(OutboxEntry, outbox_id, with_for_update=True)
                if entry.state == OutboxState.SENDING:
                    self._settle_dead(entry)
                return entry.state == OutboxState.QUEUED


def job_missing(ctx: ServiceContext, outbox_id: int, attempts: int, due: datetime) -> bool:
    """Whether RQ lacks a job for a queued entry's next attempt, due at `due`. A job that
    started yet left the entry queued for MISSING_AFTER died with its worker (a live one marks
    the entry `sending` at once)."""
    state = ctx.jobs.state(send_job_id(outbox_id, attempts))
    if state in WAITING_STATES:
        return False
    if state == "started":
        return due < _now() - MISSING_AFTER
    return True


def send_job_id(outbox_id: int, attempts: int) -> str:
    """The RQ job id of an entry's next attempt (after `attempts` made): the sweep asks RQ
    whether that job still exists. Enqueuing it twice is harmless (the lock and state decide)."""
    return f"outbox-send-{outbox_id}-{attempts}"


def _settle_accepted(entry: OutboxEntry, reply: str) -> None:
    entry.state, entry.last_error, entry.smtp_reply = OutboxState.SENT, None, reply
    entry.sent_at = entry.sent_at or _now()
    entry.sent_copy, entry.next_attempt_at, entry.updated_at = SentCopy.PENDING, None, _now()
    log.warning(
        "outbox entry settled as sent from its kept acceptance", extra={"outbox_id": entry.id}
    )


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
    """The send job: one delivery attempt; schedules its retry or its Sent copy.

    When it is sent, the job goes on with its account's further due entries on the same SMTP
    session (SEND_BATCH of them at most, started within SEND_BATCH_SECONDS), each one's own
    job taken away from the queue first (Jobs.claim: an entry whose job a worker has already
    dequeued is left to it), and files their Sent copies with one copy job. The job holds
    one of its tenant's slots meanwhile, as for one message: other tenants' jobs are not
    held up longer than by any send, and the bound keeps one account from holding a worker.

    Redis may be down when an attempt ends: the outcome is in the database, and the sweep
    enqueues what could not be enqueued here."""
    started = time.monotonic()
    outcome = _attempt(ctx, outbox_id, started)
    copy = outbox_id if outcome.copy else None
    if outcome.attempted and outcome.state == OutboxState.SENT:
        copy = _send_further(ctx, outbox_id, started, copy)
    if copy is not None:
        enqueue_or_sweep(ctx, FILE_SENT_COPY, copy, delay=COPY_DELAY_SECONDS)
    return outcome.state


def _attempt(ctx: ServiceContext, outbox_id: int, started: float) -> Outcome:
    """One delivery attempt within the job that started at `started`: its outcome recorded
    (retried) before the job's timeout, its retry enqueued, its outcome counted."""
    elapsed = time.monotonic() - started
    record_seconds = SEND_MESSAGE.timeout - RECORD_MARGIN - elapsed
    deliverer = Deliverer(ctx, pool=ctx.smtp_sessions, record_seconds=record_seconds)
    outcome = deliverer.deliver(outbox_id)
    if outcome.retry_in is not None:
        attempts = _attempts(ctx, outbox_id)
        job_id = send_job_id(outbox_id, attempts) if attempts is not None else None
        enqueue_or_sweep(ctx, SEND_MESSAGE, outbox_id, delay=outcome.retry_in, job_id=job_id)
    if outcome.attempted:
        # Counted once Redis answers, as the job's own result is recorded: the metrics miss
        # no send that ended during an outage (unless it outlasts the job's time).
        label = "deferred" if outcome.retry_in is not None else outcome.state
        retrying(
            "counting the outcome of a send",
            lambda: ctx.counters.count_send(label),
            started + SEND_MESSAGE.timeout - RECORD_MARGIN / 2,
            outbox_id,
        )
    return outcome


def _send_further(
    ctx: ServiceContext, outbox_id: int, started: float, copy: int | None
) -> int | None:
    """Send the account's further due entries after `outbox_id` (see `send`), until one is
    not sent, none is left, or the bound is reached; the entry whose Sent-copy job is to
    file the copies (`copy`, or the first entry sent here)."""
    sent, after = 0, 0  # entries sent here; the last id looked at (keyset: none twice)
    try:
        with ctx.sessions() as s:
            account_id = s.scalar(select(OutboxEntry.account_id).where(OutboxEntry.id == outbox_id))
        while account_id is not None and sent < SEND_BATCH:
            with ctx.sessions() as s:
                due = s.execute(
                    select(OutboxEntry.id, OutboxEntry.attempts)
                    .where(
                        OutboxEntry.account_id == account_id,
                        OutboxEntry.state == OutboxState.QUEUED,
                        OutboxEntry.next_attempt_at <= _now(),
                        OutboxEntry.id > after,
                    )
                    .order_by(OutboxEntry.id)
                    .limit(SEND_BATCH - sent)
                ).all()
            if not due:
                return copy
            for next_id, attempts in due:
                after = next_id
                if time.monotonic() - started > SEND_BATCH_SECONDS:
                    return copy
                if not ctx.jobs.claim(SEND_MESSAGE, send_job_id(next_id, attempts)):
                    continue  # a worker has its job, or it has none (the sweep's then)
                outcome = _attempt(ctx, next_id, started)
                sent += 1
                if outcome.copy and copy is None:
                    copy = next_id
                if not (outcome.attempted and outcome.state == OutboxState.SENT):
                    return copy  # the server defers or refuses: the rest keep their jobs
    except DEPENDENCY_ERRORS as exc:
        # The entries not taken keep their jobs; the one taken has its outcome recorded.
        log.warning(
            "sending an account's further entries stopped",
            extra={"outbox_id": outbox_id, "error": type(exc).__name__},
        )
    return copy


def _attempts(ctx: ServiceContext, outbox_id: int) -> int | None:
    try:
        with ctx.sessions() as s:
            return s.scalar(select(OutboxEntry.attempts).where(OutboxEntry.id == outbox_id))
    except DEPENDENCY_ERRORS:
        return None


def file_copy(ctx: ServiceContext, outbox_id: int) -> str:
    """The Sent-copy job: APPEND the sent message (once), with every other copy of its
    account that is due, on one login; retried on failure."""
    outcome = Deliverer(ctx).file_sent_copy(outbox_id)
    if outcome.retry_in is not None:
        enqueue_or_sweep(ctx, FILE_SENT_COPY, outbox_id, delay=outcome.retry_in)
    return outcome.state


def recover(ctx: ServiceContext) -> int:
    """Settle sends whose worker died and queue work whose job was lost; how many queued."""
    send_ids, copy_ids = Deliverer(ctx).sweep()
    attempts: dict[int, int] = {}
    accounts: dict[int, int] = {}  # account -> one entry whose copy is pending
    with ctx.sessions() as s:
        query = select(OutboxEntry.id, OutboxEntry.attempts).where(OutboxEntry.id.in_(send_ids))
        for outbox_id, count in s.execute(query):
            attempts[outbox_id] = count
        query = select(OutboxEntry.id, OutboxEntry.account_id).where(OutboxEntry.id.in_(copy_ids))
        for outbox_id, account_id in s.execute(query.order_by(OutboxEntry.id)):
            accounts.setdefault(account_id, outbox_id)
    # One copy job per account: it files the account's other due copies with that one.
    copy_ids = list(accounts.values())
    for outbox_id in send_ids:
        ctx.jobs.enqueue(
            SEND_MESSAGE, outbox_id, job_id=send_job_id(outbox_id, attempts.get(outbox_id, 0))
        )
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
    # Committed: Redis failing now leaves the work to the sweep, never a 503 for a done change.
    if entry.state == OutboxState.QUEUED:
        job_id = send_job_id(entry.id, entry.attempts)
        enqueue_or_sweep(unit.ctx, SEND_MESSAGE, entry.id, job_id=job_id, tries=ENQUEUE_TRIES)
    elif entry.sent_copy == SentCopy.PENDING:
        enqueue_or_sweep(unit.ctx, FILE_SENT_COPY, entry.id, tries=ENQUEUE_TRIES)
    return entry


def _now() -> datetime:
    return datetime.now(timezone.utc)
