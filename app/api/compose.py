"""Compose and send: drafts, sending one through the outbox, and settling outbox entries."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.api.validation import parse_body, parse_query
from app.errors import ValidationFailed
from app.schemas.compose import (
    IDEMPOTENCY_KEY,
    DraftIn,
    DraftOut,
    DraftSave,
    OutboxListParams,
    OutboxOut,
    OutboxPage,
    ResolveIn,
)
from app.schemas.pagination import page_request, paginate
from app.services import compose, outbox

bp = Blueprint("compose", __name__)
TAGS = ("compose",)


@bp.post("/api/compose")
@operation(
    "Create a draft",
    tags=TAGS,
    request=DraftIn,
    responses={201: ("The draft, version 1.", DraftOut)},
    errors=(404, 413),
    quota=True,
)
def create_draft() -> Response:
    view = compose.create_draft(unit(), parse_body(DraftIn).content())
    return respond(DraftOut.of(view), 201, location=f"/api/compose/{view.draft.id}")


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
    quota=True,
)
def save_draft() -> Response:
    body = parse_body(DraftSave)
    view, created = compose.save_draft(unit(), body.id, body.version, body.content())
    if created:
        return respond(DraftOut.of(view), 201, location=f"/api/compose/{view.draft.id}")
    return respond(DraftOut.of(view))


@bp.get("/api/compose/<int:draft_id>")
@operation("Read a draft", tags=TAGS, responses={200: ("The draft.", DraftOut)}, errors=(404,))
def get_draft(draft_id: int) -> Response:
    return respond(DraftOut.of(compose.get_draft(unit(), draft_id)))


@bp.delete("/api/compose/<int:draft_id>")
@operation(
    "Delete a draft (a sent one is read-only: 409)",
    tags=TAGS,
    responses={204: ("Deleted.", None)},
    errors=(404, 409),
)
def delete_draft(draft_id: int) -> Response:
    compose.delete_draft(unit(), draft_id)
    return Response(status=204)


@bp.post("/api/compose/<int:draft_id>/send")
@operation(
    "Send a draft: built once, queued in the outbox, delivered by a worker "
    "(`Idempotency-Key` header: the same key returns the same entry for 24 h)",
    tags=TAGS,
    responses={202: ("The outbox entry.", OutboxOut)},
    errors=(404, 409, 422),
    quota=True,
    headers=(
        {
            "name": "Idempotency-Key",
            "required": False,
            "description": "Any 1-255 printable ASCII characters; the same key (per tenant, "
            "for 24 hours) returns the same outbox entry and never sends twice.",
            "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
        },
    ),
)
def send_draft(draft_id: int) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        compose.get_draft(unit(), draft_id)  # 404 before the header's check
        raise ValidationFailed(
            "The request is invalid.",
            [{"field": "Idempotency-Key", "message": "1-255 printable ASCII characters"}],
        )
    entry = compose.send_draft(unit(), draft_id, key)
    return respond(OutboxOut.of(entry), 202, location=f"/api/outbox/{entry.id}")


@bp.get("/api/outbox")
@operation(
    "List outbox entries, newest first (`?state=` queued, sending, sent, failed, uncertain)",
    tags=TAGS,
    params=OutboxListParams,
    responses={200: ("A page of outbox entries.", OutboxPage)},
    errors=(422,),
)
def list_outbox() -> Response:
    params = parse_query(OutboxListParams)
    page = page_request(params)
    rows = outbox.list_entries(unit(), params.state, page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda e: e.id)
    return respond(OutboxPage(items=[OutboxOut.of(e) for e in items], next_cursor=cursor))


@bp.get("/api/outbox/<int:outbox_id>")
@operation(
    "One outbox entry: state, attempts, last error, Message-ID, timestamps",
    tags=TAGS,
    responses={200: ("The entry.", OutboxOut)},
    errors=(404,),
)
def get_outbox(outbox_id: int) -> Response:
    return respond(OutboxOut.of(outbox.get_entry(unit(), outbox_id)))


@bp.post("/api/outbox/<int:outbox_id>/resolve")
@operation(
    "Settle an uncertain entry as sent or failed, or send an uncertain or failed one again",
    tags=TAGS,
    request=ResolveIn,
    responses={200: ("The entry.", OutboxOut)},
    errors=(404, 409),
)
def resolve_outbox(outbox_id: int) -> Response:
    outbox.get_entry(unit(), outbox_id)  # 404 before the body's checks
    body = parse_body(ResolveIn)
    return respond(OutboxOut.of(outbox.resolve(unit(), outbox_id, body.outcome)))
