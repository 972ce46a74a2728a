"""Types shared by the schemas: timestamps, strict input models, list envelopes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Generic, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

T = TypeVar("T")
# An enum in a strict input model: its text is accepted (JSON has no enum members).
TextEnum = Strict(False)


def rfc3339(value: datetime) -> str:
    """UTC, millisecond precision, `Z` suffix."""
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]


def integral(value: object) -> object:
    # JSON has one number type: 993.0 is the integer 993 (as JSON Schema says), "993" is not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Input(BaseModel):
    """Base of request bodies: unknown fields are errors, types are not coerced ("993" is not 993).

    Integer fields that accept 993.0 say so: `BeforeValidator(integral)` after their constraints.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


def _drop_null_defaults(schema: dict[str, Any], model: type) -> None:
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class PatchInput(Input):
    """Base of PATCH bodies: every field optional; fields typed without None refuse null.

    Declared as `host: Host = None`: left out means unchanged (`model_fields_set`), while
    an explicit null fails type validation, so the document and the code agree. (mypy sees a
    None default for a type without None: those lines say `type: ignore[assignment]`.)
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_drop_null_defaults)


class Page(BaseModel, Generic[T]):
    """Every list: items and an opaque cursor for the next page (null on the last)."""

    items: list[T]
    next_cursor: str | None


def _email_address(value: str) -> str:
    # Self-hosted mail lives on internal and test domains too (example.test, corp.internal),
    # so only the syntax is checked, not global deliverability.
    try:
        return validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        ).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


EmailAddress = Annotated[
    str,
    StringConstraints(max_length=320),
    AfterValidator(_email_address),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 320}),
]
