"""Messages: list a folder, read one (headers, text, safe HTML), its raw bytes and attachments,
and change it (flags, move, delete): 202, written back to the IMAP server by a worker."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.api.validation import parse_body, parse_query
from app.errors import ValidationFailed
from app.schemas.messages import (
    ChangeOut,
    FlagsIn,
    MessageListParams,
    MessageOut,
    MessagePage,
    MessageParams,
    MoveIn,
)
from app.schemas.pagination import DATE_ID, page_request, paginate
from app.services import accounts, messages

bp = Blueprint("messages", __name__)
TAGS = ("messages",)


@bp.get("/api/accounts/<int:account_id>/messages")
@operation(
    "A folder's messages, newest first (`?folder=` a name or a role; INBOX by default)",
    tags=TAGS,
    params=MessageListParams,
    responses={200: ("A page of message summaries.", MessagePage)},
    errors=(404, 422),
)
def list_messages(account_id: int) -> Response:
    try:
        params = parse_query(MessageListParams)
        page = page_request(params, DATE_ID)
    except ValidationFailed:
        accounts.get_account(unit(), account_id)  # 404 before the parameters' checks
        raise
    rows = messages.list_messages(unit(), account_id, params.folder, page.after, page.limit + 1)
    items, cursor = paginate(
        rows, page.limit, key=lambda c: (c.message.date, c.message.id), codec=DATE_ID
    )
    return respond(MessagePage.of(items, cursor))


@bp.get("/api/messages/<int:message_id>")
@operation(
    "One message: summary, headers, text, sanitised HTML (`?remote_images=true` keeps remote "
    "images), attachments, parse error",
    tags=TAGS,
    params=MessageParams,
    responses={200: ("The message.", MessageOut)},
    errors=(404,),
)
def get_message(message_id: int) -> Response:
    message, folder = messages.get_message(unit(), message_id)  # 404 before the parameters
    params = parse_query(MessageParams)
    view = messages.read_message(unit(), message, folder, remote_images=params.remote_images)
    return respond(MessageOut.of(view))


@bp.get("/api/messages/<int:message_id>/raw")
@operation(
    "The message exactly as the server sent it",
    tags=TAGS,
    responses={200: ("RFC 5322 bytes.", "message/rfc822")},
    errors=(404, 409),
)
def get_raw(message_id: int) -> Response:
    response = Response(messages.raw_message(unit(), message_id), mimetype="message/rfc822")
    # A download, never a page: a browser must not render a tenant's mail (HTML parts and all)
    # as content of the service's origin. The name is ours, not the sender's.
    response.headers["Content-Disposition"] = _disposition(f"message-{message_id}.eml")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/api/messages/<int:message_id>/attachments/<int:index>")
@operation(
    "One attachment, decoded, with its content type",
    tags=TAGS,
    responses={200: ("The attachment's bytes.", "application/octet-stream")},
    errors=(404, 409),
)
def get_attachment(message_id: int, index: int) -> Response:
    found, data = messages.attachment(unit(), message_id, index)
    response = Response(data, mimetype=found.content_type or "application/octet-stream")
    response.headers["Content-Disposition"] = _disposition(found.filename or f"attachment-{index}")
    # Never let a browser sniff an attachment into HTML or script.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _disposition(filename: str) -> str:
    """`attachment`, an ASCII fallback name and the exact one (RFC 6266 / RFC 5987)."""
    fallback = (
        "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
        or "attachment"
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@bp.patch("/api/messages/<int:message_id>")
@operation(
    "Mark seen/unseen, flagged/unflagged: shown at once, written to the IMAP server by a worker",
    tags=TAGS,
    request=FlagsIn,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404,),
)
def patch_message(message_id: int) -> Response:
    message, _ = messages.get_message(unit(), message_id)  # 404 before the body's checks
    body = parse_body(FlagsIn)
    return respond(
        ChangeOut.of(messages.request_flags(unit(), message, body.seen, body.flagged)), 202
    )


@bp.post("/api/messages/<int:message_id>/move")
@operation(
    "Move to another folder (a name or a role), done by a worker on the IMAP server",
    tags=TAGS,
    request=MoveIn,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404,),
)
def move_message(message_id: int) -> Response:
    message, _ = messages.get_message(unit(), message_id)  # 404 before the body's checks
    body = parse_body(MoveIn)
    return respond(ChangeOut.of(messages.request_move(unit(), message, body.folder)), 202)


@bp.delete("/api/messages/<int:message_id>")
@operation(
    "Delete: move to the Trash role folder (from Trash: delete for good), done by a worker",
    tags=TAGS,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404, 409),
)
def delete_message(message_id: int) -> Response:
    return respond(ChangeOut.of(messages.request_delete(unit(), message_id)), 202)
