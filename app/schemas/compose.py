"""Drafts and outbox entries, in and out."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from app.mail.compose import ADDRESS_PATTERN, check_header_value, parse_address
from app.models import OutboxEntry
from app.schemas.common import Input, TextEnum, Timestamp, integral
from app.schemas.pagination import ID, PageParams, cursor_field
from app.services.compose import DraftContent, DraftView
from app.states import DraftState, OutboxState, Resolution, SentCopy

MAX_RECIPIENTS = 100  # per field
MAX_ATTACHMENTS = 100
BIGINT_MAX = 2**63 - 1  # ids are PostgreSQL BIGINTs


def _address(value: str) -> str:
    return parse_address(value).formatted()


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    return value


AddressText = Annotated[
    str,
    StringConstraints(max_length=998),
    AfterValidator(_address),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 998,
            "pattern": ADDRESS_PATTERN,
            "description": "`addr` or `Name <addr>`",
        }
    ),
]
# No CR, LF or NUL: nothing can be smuggled into a header line.
HEADER_PATTERN = "^[^\\r\\n\\x00]*$"
HeaderText = Annotated[
    str,
    StringConstraints(max_length=998),
    AfterValidator(check_header_value),
    WithJsonSchema({"type": "string", "maxLength": 998, "pattern": HEADER_PATTERN}),
]
FileName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255),
    AfterValidator(check_header_value),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255, "pattern": HEADER_PATTERN}),
]
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Body = Annotated[str, WithJsonSchema({"type": "string", "pattern": "^[^\\x00]*$"})]
Id = Annotated[int, Field(ge=1, le=BIGINT_MAX), BeforeValidator(integral)]
ContentType = Annotated[
    str,
    StringConstraints(max_length=255, pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$"),
]


class AttachmentIn(Input):
    filename: FileName
    content_type: ContentType = "application/octet-stream"
    content_base64: Annotated[
        str, AfterValidator(_base64), WithJsonSchema({"type": "string", "pattern": BASE64_PATTERN})
    ]


class DraftIn(Input):
    """A draft's content (POST /api/compose, and the fields of POST /api/compose/draft)."""

    account_id: Id = Field(description="The account it is sent from.")
    to: list[AddressText] = Field(
        default_factory=list,
        max_length=MAX_RECIPIENTS,
        description="`addr` or `Name <addr>`. With in_reply_to and no to/cc: the sender "
        "of that message (its Reply-To when it has one).",
    )
    cc: list[AddressText] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[AddressText] = Field(
        default_factory=list,
        max_length=MAX_RECIPIENTS,
        description="Envelope recipients only: never written into the message.",
    )
    subject: HeaderText | None = Field(
        None, description='With in_reply_to and no subject: "Re: " and that message\'s.'
    )
    text: Body | None = None
    html: Body | None = None
    in_reply_to: Id | None = Field(
        None,
        description="The id of a synced message this replies to: sets In-Reply-To and References.",
    )
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    def content(self) -> DraftContent:
        return DraftContent(
            account_id=self.account_id,
            to=self.to,
            cc=self.cc,
            bcc=self.bcc,
            subject=self.subject,
            text=self.text,
            html=self.html,
            in_reply_to=self.in_reply_to,
            attachments=[
                (a.filename, a.content_type, base64.b64decode(a.content_base64))
                for a in self.attachments
            ],
        )


def _save_schema(schema: dict[str, Any], model: type) -> None:
    # id and version are left out, never null; with id, version is required.
    for name in ("id", "version"):
        schema["properties"][name].pop("default", None)
    schema["dependentRequired"] = {"id": ["version"]}


class DraftSave(DraftIn):
    """POST /api/compose/draft: without id, a new draft; with id and version, an update."""

    model_config = ConfigDict(json_schema_extra=_save_schema)

    # Left out, never null (as PatchInput's fields): mypy sees a None default for a type
    # without None.
    id: Id = Field(None, description="The draft to update (leave out to create one).")  # type: ignore[assignment]
    version: Annotated[int, Field(ge=1), BeforeValidator(integral)] = Field(  # type: ignore[assignment]
        None, description="The version this update is based on (required with id)."
    )


class DraftAttachmentOut(BaseModel):
    filename: str
    content_type: str
    size: int
    content_base64: str


class DraftOut(BaseModel):
    id: int
    account_id: int
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    text: str | None
    html: str | None
    in_reply_to: int | None
    attachments: list[DraftAttachmentOut]
    version: int
    state: DraftState
    outbox_id: int | None = Field(description="Its outbox entry, once it was sent.")
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, view: DraftView) -> DraftOut:
        draft = view.draft
        return cls(
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
                DraftAttachmentOut(**meta, content_base64=base64.b64encode(data).decode())
                for meta, data in zip(draft.attachments, view.attachments, strict=True)
            ],
            version=draft.version,
            state=draft.state,
            outbox_id=view.outbox_id,
            created_at=draft.created_at,
            updated_at=draft.updated_at,
        )


class OutboxOut(BaseModel):
    id: int
    outbox_id: int = Field(description="The same as id.")
    account_id: int
    draft_id: int | None
    state: OutboxState
    attempts: int
    last_error: str | None
    message_id: str = Field(description="The Message-ID header of the message.")
    smtp_reply: str | None = Field(description="The server's reply to the message, once sent.")
    sent_copy: SentCopy = Field(description="The copy in the account's Sent folder.")
    sent_copy_error: str | None
    next_attempt_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    sent_at: Timestamp | None

    @classmethod
    def of(cls, entry: OutboxEntry) -> OutboxOut:
        return cls(
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
        )


class OutboxPage(BaseModel):
    items: list[OutboxOut]
    next_cursor: str | None


class OutboxListParams(PageParams):
    cursor: str | None = cursor_field(ID)
    state: OutboxState | None = Field(None, description="Only entries in this state.")


# The Idempotency-Key header of a send: printable ASCII without spaces at the ends, as the
# IETF draft's examples are.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


class ResolveIn(Input):
    outcome: Annotated[Resolution, TextEnum] = Field(
        description="sent / failed: settle an uncertain entry as what the user found out; "
        "retry: send it again (an uncertain or failed entry), knowingly."
    )
