"""Compose and send: drafts, sending one through the outbox, and settling outbox entries."""

from __future__ import annotations

import base64
import re

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import Field
from sqlalchemy.exc import IntegrityError

from app.api.openapi import operation
from app.api.pagination import ID, PageParams, cursor_field, page_request, paginate
from app.api.validation import parse_body, parse_query
from app.db import get_session
from app.errors import ValidationFailed
from app.models import Draft, OutboxEntry
from app.queues import enqueue_send, enqueue_sent_copy
from app.schemas.compose import (
    DraftIn,
    DraftOut,
    DraftSave,
    OutboxOut,
    OutboxPage,
    ResolveIn,
)
from app.services import compose, outbox
from app.services.compose import DraftContent
from app.states import DraftState, OutboxState, SentCopy

bp = Blueprint("compose", __name__)
TAGS = ("compose",)


class OutboxListParams(PageParams):
    cursor: str | None = cursor_field(ID)
    state: OutboxState | None = Field(None, description="Only entries in this state.")


# Printable ASCII without spaces at the ends, as the IETF draft's examples are.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


def draft_out(draft: Draft) -> dict:
    session = get_session()
    entry = compose.outbox_of(session, draft) if draft.state == DraftState.SENT else None
    datas = compose.attachment_bytes(session, draft)
    return DraftOut(
        id=draft.id,
        account_id=draft.account_id,
        to=draft.to_addrs,
        cc=draft.cc_addrs,
        bcc=draft.bcc_addrs,
        subject=draft.subject,
        text=draft.text_body,
        html=draft.html_body,
        in_reply_to=draft.in_reply_to,
        attachments=[
            {**meta, "content_base64": base64.b64encode(data).decode()}
            for meta, data in zip(draft.attachments, datas, strict=True)
        ],
        version=draft.version,
        state=draft.state,
        outbox_id=entry.id if entry else None,
        created_at=draft.created_at,
        updated_at=draft.updated_at,
    ).model_dump(mode="json")


def outbox_out(entry: OutboxEntry) -> dict:
    return OutboxOut(
        id=entry.id,
        outbox_id=entry.id,
        account_id=entry.account_id,
        draft_id=entry.draft_id,
        state=entry.state,
        attempts=entry.attempts,
        last_error=entry.last_error,
        message_id=entry.message_id,
        smtp_reply=entry.smtp_reply,
        sent_copy=entry.sent_copy,
        sent_copy_error=entry.sent_copy_error,
        next_attempt_at=entry.next_attempt_at,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        sent_at=entry.sent_at,
    ).model_dump(mode="json")


def _content(body: DraftIn) -> DraftContent:
    return DraftContent(
        account_id=body.account_id,
        to=body.to,
        cc=body.cc,
        bcc=body.bcc,
        subject=body.subject,
        text=body.text,
        html=body.html,
        in_reply_to=body.in_reply_to,
        attachments=compose.decode_attachments(body.attachments),
    )


def _max_bytes() -> int:
    return current_app.config["SETTINGS"].max_message_bytes


def _saved(draft: Draft, status: int) -> Response:
    session = get_session()
    session.commit()
    session.refresh(draft)
    response = jsonify(draft_out(draft))
    response.status_code = status
    if status == 201:
        response.headers["Location"] = f"/api/compose/{draft.id}"
    return response


@bp.post("/api/compose")
@operation(
    "Create a draft",
    tags=TAGS,
    request=DraftIn,
    responses={201: ("The draft, version 1.", DraftOut)},
    errors=(404, 413),
)
def create_draft():
    body = parse_body(DraftIn)
    return _saved(compose.create_draft(get_session(), _content(body), _max_bytes()), 201)


@bp.post("/api/compose/draft")
@operation(
    "Save a draft: without id a new one (201); with id and version an update (200)",
    tags=TAGS,
    request=DraftSave,
    responses={
        200: ("The updated draft, its version one higher.", DraftOut),
        201: ("The new draft.", DraftOut),
    },
    errors=(404, 409, 413),
)
def save_draft():
    body = parse_body(DraftSave)
    session = get_session()
    if body.id is None:
        return _saved(compose.create_draft(session, _content(body), _max_bytes()), 201)
    if body.version is None:
        raise ValidationFailed(
            "The request is invalid.",
            [{"field": "version", "message": "required to update a draft"}],
        )
    draft = compose.update_draft(session, body.id, body.version, _content(body), _max_bytes())
    return _saved(draft, 200)


@bp.get("/api/compose/<int:draft_id>")
@operation("Read a draft", tags=TAGS, responses={200: ("The draft.", DraftOut)}, errors=(404,))
def get_draft(draft_id: int):
    return jsonify(draft_out(compose.get_draft(get_session(), draft_id)))


@bp.delete("/api/compose/<int:draft_id>")
@operation(
    "Delete a draft (a sent one is read-only: 409)",
    tags=TAGS,
    responses={204: ("Deleted.", None)},
    errors=(404, 409),
)
def delete_draft(draft_id: int):
    session = get_session()
    compose.delete_draft(session, draft_id)
    session.commit()
    return Response(status=204)


@bp.post("/api/compose/<int:draft_id>/send")
@operation(
    "Send a draft: built once, queued in the outbox, delivered by a worker "
    "(`Idempotency-Key` header: the same key returns the same entry for 24 h)",
    tags=TAGS,
    responses={202: ("The outbox entry.", OutboxOut)},
    errors=(404, 409, 422),
    headers=(
        {
            "name": "Idempotency-Key",
            "required": False,
            "description": "Any 1-255 printable ASCII characters; the same key (per tenant, "
            "for 24 hours) returns the same outbox entry and never sends twice.",
            "schema": {"type": "string", "pattern": f"^{_IDEMPOTENCY_KEY.pattern}$"},
        },
    ),
)
def send_draft(draft_id: int):
    session = get_session()
    compose.get_draft(session, draft_id)  # 404 before the header (API.md's order of checks)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            "The request is invalid.",
            [{"field": "Idempotency-Key", "message": "1-255 printable ASCII characters"}],
        )
    try:
        entry, created = compose.request_send(session, draft_id, key)
        session.commit()
    except IntegrityError:
        # The same key arrived twice at once: the other request's entry is the answer.
        session.rollback()
        entry, created = compose.request_send(session, draft_id, key)
        session.commit()
    if created:
        # Should Redis fail here, the entry is stored: the scheduler's sweep queues it.
        enqueue_send(current_app.extensions["redis"], entry.id)
    session.refresh(entry)
    response = jsonify(outbox_out(entry))
    response.status_code = 202
    response.headers["Location"] = f"/api/outbox/{entry.id}"
    return response


@bp.get("/api/outbox")
@operation(
    "List outbox entries, newest first (`?state=` queued, sending, sent, failed, uncertain)",
    tags=TAGS,
    params=OutboxListParams,
    responses={200: ("A page of outbox entries.", OutboxPage)},
    errors=(422,),
)
def list_outbox():
    params = parse_query(OutboxListParams)
    page = page_request(params)
    rows = outbox.list_entries(get_session(), params.state, page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda e: e.id)
    return jsonify({"items": [outbox_out(e) for e in items], "next_cursor": cursor})


@bp.get("/api/outbox/<int:outbox_id>")
@operation(
    "One outbox entry: state, attempts, last error, Message-ID, timestamps",
    tags=TAGS,
    responses={200: ("The entry.", OutboxOut)},
    errors=(404,),
)
def get_outbox(outbox_id: int):
    return jsonify(outbox_out(outbox.get_entry(get_session(), outbox_id)))


@bp.post("/api/outbox/<int:outbox_id>/resolve")
@operation(
    "Settle an uncertain entry as sent or failed, or send an uncertain or failed one again",
    tags=TAGS,
    request=ResolveIn,
    responses={200: ("The entry.", OutboxOut)},
    errors=(404, 409),
)
def resolve_outbox(outbox_id: int):
    session = get_session()
    outbox.get_entry(session, outbox_id)  # 404 before the body (API.md's order of checks)
    body = parse_body(ResolveIn)
    entry = outbox.resolve(session, outbox_id, body.outcome)
    session.commit()
    redis = current_app.extensions["redis"]
    if entry.state == OutboxState.QUEUED:
        enqueue_send(redis, entry.id)
    elif entry.sent_copy == SentCopy.PENDING:
        enqueue_sent_copy(redis, entry.id)
    session.refresh(entry)
    return jsonify(outbox_out(entry))
