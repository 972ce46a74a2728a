"""Message shapes shared by every endpoint that lists mail (folders, search)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.models import Message
from app.schemas.common import Input, Page, PatchInput, Timestamp
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
    """One copy of a message in one folder, as lists show it (shared/API.md)."""

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


def _addresses(values: list | None) -> list[AddressOut]:
    return [AddressOut(name=a.get("name"), email=a.get("email") or "") for a in values or []]


def summary_model(message: Message, folder_name: str) -> MessageSummary:
    """The summary of `message`, a copy in the folder named `folder_name`."""
    sender = None
    if message.from_email is not None or message.from_name is not None:
        sender = AddressOut(name=message.from_name, email=message.from_email or "")
    return MessageSummary(
        id=message.id,
        account_id=message.account_id,
        folder=folder_name,
        uid=message.uid,
        subject=message.subject,
        from_=sender,
        to=_addresses(message.to_addrs),
        cc=_addresses(message.cc_addrs),
        date=message.date,
        flags=FlagsOut(
            seen=message.seen,
            flagged=message.flagged,
            answered=message.answered,
            draft=message.draft,
        ),
        has_attachments=message.has_attachments,
        size=message.size,
    )


def message_summary(message: Message, folder_name: str) -> dict:
    """The summary of `message` as a JSON-ready dict (for jsonify)."""
    return summary_model(message, folder_name).model_dump(mode="json", by_alias=True)


class MessagePage(Page[MessageSummary]):
    pass


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


class FlagsIn(PatchInput):
    """Flags to set; a flag left out is unchanged."""

    seen: bool = None
    flagged: bool = None


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
