"""Drafts, and turning one into an outbox entry: built once, queued once.

A draft changes only with the version it was read at (optimistic locking: a stale version is a
409, never a lost update). Sending builds the MIME bytes once and stores them with the entry,
so every attempt and the Sent copy carry the same Message-ID and bytes; the draft becomes
read-only. An Idempotency-Key names one entry per tenant for 24 hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.context import DEPENDENCY_ERRORS, Unit
from app.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from app.jobs import SEND_MESSAGE
from app.mail.compose import Address, Outgoing, OutgoingAttachment, build, parse_address
from app.models import Account, Draft, DraftAttachment, Message, OutboxEntry
from app.services import outbox, usage
from app.services.accounts import get_account
from app.states import DraftState, OutboxState, SentCopy

IDEMPOTENCY_TTL = timedelta(hours=24)
MAX_REFERENCES = 20  # ids kept in References (the first and the latest matter to threading)
_MESSAGE_ID = re.compile(r"<?([^<>\s\x00-\x1f\x7f]{1,250})>?")


@dataclass(frozen=True)
class DraftContent:
    """What a user writes (validated by app.schemas.compose)."""

    account_id: int
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str | None
    text: str | None
    html: str | None
    in_reply_to: int | None
    attachments: list[tuple[str, str, bytes]]  # filename, content type, bytes


@dataclass(frozen=True)
class DraftView:
    """A draft as one reads it: with its attachments' bytes and, once sent, its outbox entry."""

    draft: Draft
    attachments: list[bytes]
    outbox_id: int | None


def _draft(session: Session, draft_id: int, *, for_update: bool = False) -> Draft:
    query = select(Draft).where(Draft.id == draft_id)
    draft = session.scalars(query.with_for_update() if for_update else query).first()
    if draft is None:
        raise NotFound(f"Draft {draft_id} does not exist.")
    return draft


def get_draft(unit: Unit, draft_id: int) -> DraftView:
    draft = _draft(unit.session, draft_id)
    entry = outbox_of(unit.session, draft) if draft.state == DraftState.SENT else None
    return DraftView(draft, attachment_bytes(unit.session, draft), entry.id if entry else None)


def attachment_bytes(session: Session, draft: Draft) -> list[bytes]:
    rows = session.scalars(
        select(DraftAttachment)
        .where(DraftAttachment.draft_id == draft.id)
        .order_by(DraftAttachment.position)
    )
    return [row.data for row in rows]


def outbox_of(session: Session, draft: Draft) -> OutboxEntry | None:
    return session.scalars(select(OutboxEntry).where(OutboxEntry.draft_id == draft.id)).first()


def create_draft(unit: Unit, content: DraftContent) -> DraftView:
    session = unit.session
    draft = Draft(version=1, state=DraftState.DRAFT)
    _fill(unit, draft, content)
    usage.claim_storage(unit, draft.size, "The draft")
    session.add(draft)
    session.flush()
    _store_attachments(session, draft, content)
    unit.commit()
    return get_draft(unit, draft.id)


def save_draft(
    unit: Unit, draft_id: int | None, version: int | None, content: DraftContent
) -> tuple[DraftView, bool]:
    """A new draft without `draft_id`, else an update of that draft at `version`; (the draft,
    whether it was created)."""
    if draft_id is None:
        return create_draft(unit, content), True
    if version is None:
        raise ValidationFailed(
            "The request is invalid.",
            [{"field": "version", "message": "required to update a draft"}],
        )
    return update_draft(unit, draft_id, version, content), False


def update_draft(unit: Unit, draft_id: int, version: int, content: DraftContent) -> DraftView:
    """Replace a draft's content; Conflict when `version` is not its current one."""
    session = unit.session
    draft = _draft(session, draft_id, for_update=True)
    if draft.state != DraftState.DRAFT:
        raise Conflict(f"Draft {draft.id} was sent and can no longer change.")
    if draft.version != version:
        raise Conflict(
            f"Draft {draft.id} is at version {draft.version}, not {version}: it changed "
            "since it was read. Read it again and reapply the change."
        )
    stored = draft.size
    _fill(unit, draft, content)
    usage.claim_storage(unit, draft.size - stored, "The draft's new content")
    draft.version = version + 1
    draft.updated_at = datetime.now(timezone.utc)
    session.execute(delete(DraftAttachment).where(DraftAttachment.draft_id == draft.id))
    _store_attachments(session, draft, content)
    unit.commit()
    return get_draft(unit, draft.id)


def delete_draft(unit: Unit, draft_id: int) -> None:
    draft = _draft(unit.session, draft_id, for_update=True)
    if draft.state != DraftState.DRAFT:
        raise Conflict(f"Draft {draft.id} was sent and can no longer change.")
    unit.session.delete(draft)
    unit.commit()


def _fill(unit: Unit, draft: Draft, content: DraftContent) -> None:
    session, max_bytes = unit.session, unit.ctx.settings.max_message_bytes
    account = get_account(unit, content.account_id)
    size = sum(len(part.encode()) for part in (content.text or "", content.html or ""))
    size += sum(len(data) for _, _, data in content.attachments)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"The message would be {size} bytes; the limit is {max_bytes} (MAX_MESSAGE_BYTES)."
        )
    to, subject = content.to, content.subject
    draft.in_reply_to = draft.in_reply_to_header = draft.references_header = None
    if content.in_reply_to is not None:
        # A query, not session.get(): the tenant filter applies to queries (app.tenancy).
        original = session.scalars(select(Message).where(Message.id == content.in_reply_to)).first()
        if original is None:
            raise NotFound(f"Message {content.in_reply_to} (in_reply_to) does not exist.")
        draft.in_reply_to = original.id
        # Only well-formed ids go back into headers (a received message may carry anything).
        parent = _message_ids([original.message_id_header or ""])
        draft.in_reply_to_header = parent[-1] if parent else None
        references = _message_ids(original.references)
        if len(references) > MAX_REFERENCES:  # trim the middle (RFC 5322 3.6.4)
            references = references[:1] + references[1 - MAX_REFERENCES :]
        draft.references_header = " ".join(references) or None
        if not to and not content.cc:
            to = _reply_recipients(original)
        if subject is None:
            subject = _reply_subject(original.subject)
    draft.account_id = account.id
    draft.to_addrs, draft.cc_addrs, draft.bcc_addrs = to, content.cc, content.bcc
    draft.subject = subject or ""
    draft.text_body, draft.html_body = content.text, content.html
    draft.attachments = [
        {"filename": name, "content_type": kind, "size": len(data)}
        for name, kind, data in content.attachments
    ]
    draft.size = size


def _reply_recipients(original: Message) -> list[str]:
    """Who a reply goes to: the Reply-To addresses, else the sender (those we can write to)."""
    candidates = [a for a in original.reply_to or [] if a.get("email")]
    if not candidates and original.from_email:
        candidates = [{"name": original.from_name, "email": original.from_email}]
    result = []
    for a in candidates:
        named = f"{a['name']} <{a['email']}>" if a.get("name") else None
        for text in filter(None, (named, a["email"])):
            try:
                result.append(parse_address(text).formatted())
                break
            except ValueError:
                continue  # a name we cannot write back: the bare address, else nothing
    return result


def _message_ids(values: list[str] | None) -> list[str]:
    """Each stored id (kept without angle brackets) as `<id>`; anything else dropped."""
    ids = [_MESSAGE_ID.fullmatch(value.strip()) for value in values or []]
    return [f"<{found[1]}>" for found in ids if found]


def _reply_subject(subject: str | None) -> str:
    subject = " ".join((subject or "").split())
    return subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()


def _store_attachments(session: Session, draft: Draft, content: DraftContent) -> None:
    for position, (_, _, data) in enumerate(content.attachments):
        session.add(DraftAttachment(draft_id=draft.id, position=position, data=data))


def send_draft(unit: Unit, draft_id: int, idempotency_key: str | None) -> OutboxEntry:
    """Queue the draft in the outbox and enqueue its delivery; its outbox entry.

    The same key (per tenant, within 24 hours) returns the entry it created, whatever its
    state; the same key with another draft, or sending a sent draft without its key, is a
    Conflict naming the entry.

    Once the entry is committed the answer is the entry, whatever Redis does: the enqueue is
    tried a few times, and if Redis stays down the outbox sweep enqueues the entry (it queues
    due entries that have no job). A retry with the same key enqueues the entry again when
    it is queued and RQ has no job for it, so a client need not wait for the sweep.
    """
    try:
        entry, created = _queue(unit, draft_id, idempotency_key)
        _keep_loaded(unit.session, entry, created)
        unit.commit()
    except IntegrityError:
        # The same key arrived twice at once: the other request's entry is the answer.
        unit.session.rollback()
        entry, created = _queue(unit, draft_id, idempotency_key)
        _keep_loaded(unit.session, entry, created)
        unit.commit()
    job_id = outbox.send_job_id(entry.id, entry.attempts)
    if created or _job_missing(unit, entry):
        outbox.enqueue_or_sweep(
            unit.ctx,
            SEND_MESSAGE,
            entry.id,
            job_id=job_id,
            tries=outbox.ENQUEUE_TRIES,
            tenant_id=entry.tenant_id,
        )
    return entry


def _keep_loaded(session: Session, entry: OutboxEntry, created: bool) -> None:
    """A new entry is answered as it was inserted: every field it has was set here (the id
    came back with the INSERT), so it leaves the session before the commit, which would
    otherwise expire it and cost a SELECT to read it back for the answer."""
    if created:
        session.expunge(entry)


def _job_missing(unit: Unit, entry: OutboxEntry) -> bool:
    """A queued, due entry whose job RQ does not hold (its enqueue failed, or Redis lost it)."""
    due = entry.next_attempt_at
    if entry.state != OutboxState.QUEUED or due is None or due > _now():
        return False
    try:
        return outbox.job_missing(unit.ctx, entry.id, entry.attempts, due)
    except DEPENDENCY_ERRORS:
        return False  # Redis is down: enqueuing would fail too; the sweep queues it


def _queue(unit: Unit, draft_id: int, idempotency_key: str | None) -> tuple[OutboxEntry, bool]:
    """The draft's outbox entry, queued; (entry, True) when this call created it."""
    session = unit.session
    # The draft, locked, and its account, in one round trip.
    found = session.execute(
        select(Draft, Account)
        .join(Account, Account.id == Draft.account_id)
        .where(Draft.id == draft_id)
        .with_for_update(of=Draft)
    ).first()
    if found is None:
        raise NotFound(f"Draft {draft_id} does not exist.")
    draft, account = found
    if idempotency_key is not None:
        earlier = session.scalars(
            select(OutboxEntry).where(OutboxEntry.idempotency_key == idempotency_key)
        ).first()
        if earlier is not None and earlier.created_at < _now() - IDEMPOTENCY_TTL:
            earlier.idempotency_key = None  # expired: the key may name a new entry
            session.flush()
        elif earlier is not None:
            if earlier.draft_id != draft.id:
                raise Conflict(
                    f"Idempotency-Key was already used to send draft {earlier.draft_id} "
                    f"(outbox entry {earlier.id})."
                )
            return earlier, False
    if draft.state != DraftState.DRAFT:
        entry = outbox_of(session, draft)
        raise Conflict(
            f"Draft {draft.id} was already sent: outbox entry {entry.id if entry else '?'}."
        )
    stored = attachment_bytes(session, draft) if draft.attachments else []
    outgoing = Outgoing(
        sender=Address(account.display_name or None, account.email),
        to=[parse_address(a) for a in draft.to_addrs],
        cc=[parse_address(a) for a in draft.cc_addrs],
        bcc=[parse_address(a) for a in draft.bcc_addrs],
        subject=draft.subject,
        text=draft.text_body,
        html=draft.html_body,
        attachments=[
            OutgoingAttachment(meta["filename"], meta["content_type"], data)
            for meta, data in zip(draft.attachments, stored, strict=True)
        ],
        in_reply_to=draft.in_reply_to_header,
        references=draft.references_header,
    )
    if not outgoing.recipients():
        raise ValidationFailed(
            "The draft has no recipients.", [{"field": "to", "message": "at least one needed"}]
        )
    built = build(outgoing)
    now = _now()
    draft.state = DraftState.SENT
    draft.updated_at = now
    # Every column set here, so that the answer needs no read after the INSERT.
    entry = OutboxEntry(
        account_id=account.id,
        draft_id=draft.id,
        idempotency_key=idempotency_key,
        state=OutboxState.QUEUED,
        attempts=0,
        last_error=None,
        message_id=built.message_id,
        envelope_from=account.email,
        recipients=outgoing.recipients(),
        mime=built.mime,
        next_attempt_at=now,
        dot_sent_at=None,
        sent_at=None,
        smtp_reply=None,
        sent_copy=SentCopy.NONE,
        sent_copy_attempts=0,
        sent_copy_error=None,
        resolved_by=None,
        created_at=now,
        updated_at=now,
    )
    session.add(entry)
    session.flush()
    # The outbox keeps the built message until the entry is deleted: it counts. The INSERT's
    # trigger added it to the tenant's usage row and holds that row until the commit, so
    # the check comes after it: the row is held over this one read and the commit, and one
    # tenant's concurrent sends wait for each other that long only. A refusal rolls back.
    usage.check_stored(unit, len(built.mime), "Sending this draft")
    return entry, True


def _now() -> datetime:
    return datetime.now(timezone.utc)
