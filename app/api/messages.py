"""Messages: list a folder, read one (headers, text, safe HTML), its raw bytes and attachments,
and change it (flags, move, delete): 202, written back to the IMAP server by a worker."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field

from app.api.openapi import operation
from app.api.pagination import DATE_ID, PageParams, cursor_field, page_request, paginate
from app.api.validation import parse_body, parse_query
from app.db import get_session
from app.errors import NotFound, ValidationFailed
from app.mail.mime import parse_message
from app.queues import DEFAULT, get_queue
from app.schemas.messages import (
    ChangeOut,
    FlagsIn,
    MessageOut,
    MessagePage,
    MoveIn,
    message_summary,
)
from app.services import messages
from app.services.accounts import get_account
from app.states import ChangeState

bp = Blueprint("messages", __name__)
TAGS = ("messages",)
APPLY_CHANGES = "workers.jobs.apply_message_changes"


class MessageListParams(PageParams):
    cursor: str | None = cursor_field(DATE_ID)
    folder: str = Field("INBOX", description="A folder's full name (`/` separated) or a role.")


class MessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remote_images: bool = Field(
        False, description="true: keep remote images in the sanitised HTML (they reveal reads)."
    )


@bp.get("/api/accounts/<int:account_id>/messages")
@operation(
    "A folder's messages, newest first (`?folder=` a name or a role; INBOX by default)",
    tags=TAGS,
    params=MessageListParams,
    responses={200: ("A page of message summaries.", MessagePage)},
    errors=(404, 422),
)
def list_messages(account_id: int):
    session = get_session()
    account = get_account(session, account_id)
    params = parse_query(MessageListParams)
    name = params.folder
    folder = messages.find_folder(session, account.id, name)
    if folder is None:
        raise NotFound(f"Account {account_id} has no folder {name!r}.")
    page = page_request(params, DATE_ID)
    rows = messages.list_messages(session, folder, page.after, page.limit + 1)
    items, cursor = paginate(rows, page.limit, key=lambda m: (m.date, m.id), codec=DATE_ID)
    return jsonify(
        {"items": [message_summary(m, folder.name) for m in items], "next_cursor": cursor}
    )


@bp.get("/api/messages/<int:message_id>")
@operation(
    "One message: summary, headers, text, sanitised HTML (`?remote_images=true` keeps remote "
    "images), attachments, parse error",
    tags=TAGS,
    params=MessageParams,
    responses={200: ("The message.", MessageOut)},
    errors=(404,),
)
def get_message(message_id: int):
    session = get_session()
    message, folder = messages.get_message(session, message_id)
    body = message_summary(message, folder.name)
    html = message.html_body
    if html is not None and parse_query(MessageParams).remote_images:
        # The stored HTML had remote loads removed; asking for them means sanitising the
        # original again, from the raw bytes.
        html = parse_message(messages.raw_bytes(session, message), allow_remote=True).html
    body.update(
        headers=message.headers,
        text=message.text_body,
        html=html,
        attachments=[
            {k: a[k] for k in ("index", "filename", "content_type", "size")}
            for a in message.attachments
        ],
        parse_error=message.parse_error,
    )
    return jsonify(body)


@bp.get("/api/messages/<int:message_id>/raw")
@operation(
    "The message exactly as the server sent it",
    tags=TAGS,
    responses={200: ("RFC 5322 bytes.", "message/rfc822")},
    errors=(404,),
)
def get_raw(message_id: int):
    session = get_session()
    message, _ = messages.get_message(session, message_id)
    return Response(messages.raw_bytes(session, message), mimetype="message/rfc822")


@bp.get("/api/messages/<int:message_id>/attachments/<int:index>")
@operation(
    "One attachment, decoded, with its content type",
    tags=TAGS,
    responses={200: ("The attachment's bytes.", "application/octet-stream")},
    errors=(404,),
)
def get_attachment(message_id: int, index: int):
    session = get_session()
    message, _ = messages.get_message(session, message_id)
    found, data = messages.attachment(session, message, index)
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


def _accepted(change) -> tuple[Response, int]:
    get_session().commit()
    get_queue(DEFAULT, current_app.extensions["redis"]).enqueue(
        APPLY_CHANGES, change.account_id, job_timeout=600
    )
    body = ChangeOut(
        id=change.id,
        message_id=change.message_id,
        kind=change.kind,
        state=change.state or ChangeState.PENDING,
        created_at=change.created_at,
    )
    return jsonify(body.model_dump(mode="json")), 202


@bp.patch("/api/messages/<int:message_id>")
@operation(
    "Mark seen/unseen, flagged/unflagged: shown at once, written to the IMAP server by a worker",
    tags=TAGS,
    request=FlagsIn,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404,),
)
def patch_message(message_id: int):
    session = get_session()
    message, _ = messages.get_message(session, message_id)
    body = parse_body(FlagsIn)
    if not body.model_fields_set:
        raise ValidationFailed(
            "Nothing to change: give seen and/or flagged.",
            [{"field": "body", "message": "seen or flagged required"}],
        )
    change = messages.request_flags(session, message, body.seen, body.flagged)
    session.refresh(change)
    return _accepted(change)


@bp.post("/api/messages/<int:message_id>/move")
@operation(
    "Move to another folder (a name or a role), done by a worker on the IMAP server",
    tags=TAGS,
    request=MoveIn,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404,),
)
def move_message(message_id: int):
    session = get_session()
    message, folder = messages.get_message(session, message_id)
    body = parse_body(MoveIn)
    change = messages.request_move(session, message, folder, body.folder)
    session.refresh(change)
    return _accepted(change)


@bp.delete("/api/messages/<int:message_id>")
@operation(
    "Delete: move to the Trash role folder (from Trash: delete for good), done by a worker",
    tags=TAGS,
    responses={202: ("The change, pending.", ChangeOut)},
    errors=(404, 409),
)
def delete_message(message_id: int):
    session = get_session()
    message, folder = messages.get_message(session, message_id)
    change = messages.request_delete(session, message, folder)
    session.refresh(change)
    return _accepted(change)
