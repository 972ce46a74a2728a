"""Message shapes shared by every endpoint that lists mail (folders, search)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.models import MessageChange
from app.schemas.common import Input, Page, PatchInput, Timestamp
from app.schemas.pagination import DATE_ID, PageParams, cursor_field
from app.services.messages import Copy, MessageView, Summarized
from app.states import ChangeKind, ChangeState


class AddressOut(BaseModel):
    name: str | None
    email: str


class FlagsOut(BaseModel):
    seen: bool
    flagged: bool
    answered: bool
    draft: bool


class MessageSummary(BaseModel):
    """One copy of a message in one folder, as lists show it."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    account_id: int
    folder: str
    uid: int
    subject: str | None
    # `from` is a Python keyword: the field is from_, the JSON name "from".
    from_: AddressOut | None = Field(alias="from")
    to: list[AddressOut]
    cc: list[AddressOut]
    date: Timestamp | None
    flags: FlagsOut
    has_attachments: bool
    size: int
    too_large: bool = Field(
        description="Above MAX_MESSAGE_BYTES: stored with its headers and size only (no body, "
        "no raw bytes, no attachments)."
    )
    over_quota: bool = Field(
        description="Synced while the tenant was over its storage quota: stored with its "
        "headers and size only."
    )


def _addresses(values: list[dict[str, str | None]] | None) -> list[dict[str, str | None]]:
    return [{"name": a.get("name"), "email": a.get("email") or ""} for a in values or []]


def summary_fields(message: Summarized, folder_name: str) -> dict[str, Any]:
    """The fields of a summary of `message`, a copy in the folder named `folder_name`, by
    their JSON names: validated in one call with the page they are part of (a model per
    summary and per address cost more than the rest of a list request)."""
    sender = None
    if message.from_email is not None or message.from_name is not None:
        sender = {"name": message.from_name, "email": message.from_email or ""}
    return {
        "id": message.id,
        "account_id": message.account_id,
        "folder": folder_name,
        "uid": message.uid,
        "subject": message.subject,
        "from": sender,
        "to": _addresses(message.to_addrs),
        "cc": _addresses(message.cc_addrs),
        "date": message.date,
        "flags": {
            "seen": message.seen,
            "flagged": message.flagged,
            "answered": message.answered,
            "draft": message.draft,
        },
        "has_attachments": message.has_attachments,
        "size": message.size,
        "too_large": message.too_large,
        "over_quota": message.over_quota,
    }


def summary_model(message: Summarized, folder_name: str) -> MessageSummary:
    """The summary of `message`, a copy in the folder named `folder_name`."""
    return MessageSummary.model_validate(summary_fields(message, folder_name))


class MessagePage(Page[MessageSummary]):
    @classmethod
    def of(cls, copies: list[Copy], next_cursor: str | None) -> MessagePage:
        items = [summary_fields(c.message, c.folder) for c in copies]
        return cls.model_validate({"items": items, "next_cursor": next_cursor})


class MessageListParams(PageParams):
    cursor: str | None = cursor_field(DATE_ID)
    folder: str = Field("INBOX", description="A folder's full name (`/` separated) or a role.")


class MessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    remote_images: bool = Field(
        False, description="true: keep remote images in the sanitised HTML (they reveal reads)."
    )


class AttachmentOut(BaseModel):
    index: int = Field(description="From 0, in MIME order over the parts that are attachments.")
    filename: str | None
    content_type: str
    size: int


class MessageOut(MessageSummary):
    """One message in full (GET /api/messages/{id})."""

    headers: list[tuple[str, str]] = Field(
        description="Decoded header fields as [name, value] pairs, in order."
    )
    text: str | None
    html: str | None = Field(
        description="Sanitised: no scripts, no event handlers, no remote loads unless asked."
    )
    attachments: list[AttachmentOut]
    parse_error: str | None = Field(description="Null unless the message could not be parsed.")

    @classmethod
    def of(cls, view: MessageView) -> MessageOut:
        message = view.message
        return cls.model_validate(
            {
                **summary_fields(message, view.folder),
                "headers": message.headers,
                "text": message.text_body,
                "html": view.html,
                "attachments": [
                    {
                        "index": a["index"],
                        "filename": a["filename"],
                        "content_type": a["content_type"],
                        "size": a["size"],
                    }
                    for a in message.attachments
                ],
                "parse_error": message.parse_error,
            }
        )


class FlagsIn(PatchInput):
    """Flags to set; a flag left out is unchanged."""

    seen: bool = None  # type: ignore[assignment]
    flagged: bool = None  # type: ignore[assignment]


class MoveIn(Input):
    folder: str = Field(
        min_length=1, max_length=1000, description="The target folder: a full name or a role."
    )


class ChangeOut(BaseModel):
    """A change asked for, applied to the IMAP server by a worker."""

    id: int
    message_id: int | None
    kind: ChangeKind
    state: ChangeState
    created_at: Timestamp

    @classmethod
    def of(cls, change: MessageChange) -> ChangeOut:
        return cls(
            id=change.id,
            message_id=change.message_id,
            kind=change.kind,
            state=change.state or ChangeState.PENDING,
            created_at=change.created_at,
        )
