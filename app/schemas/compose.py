"""Drafts and outbox entries, in and out."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

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
from app.schemas.common import Input, TextEnum, Timestamp, integral
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


def _save_schema(schema: dict, model: type) -> None:
    # id and version are left out, never null; with id, version is required.
    for name in ("id", "version"):
        schema["properties"][name].pop("default", None)
    schema["dependentRequired"] = {"id": ["version"]}


class DraftSave(DraftIn):
    """POST /api/compose/draft: without id, a new draft; with id and version, an update."""

    model_config = ConfigDict(json_schema_extra=_save_schema)

    id: Id = Field(None, description="The draft to update (leave out to create one).")
    version: Annotated[int, Field(ge=1), BeforeValidator(integral)] = Field(
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


class OutboxPage(BaseModel):
    items: list[OutboxOut]
    next_cursor: str | None


class ResolveIn(Input):
    outcome: Annotated[Resolution, TextEnum] = Field(
        description="sent / failed: settle an uncertain entry as what the user found out; "
        "retry: send it again (an uncertain or failed entry), knowingly."
    )
