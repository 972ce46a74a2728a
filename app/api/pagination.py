"""Keyset pagination: `?limit=` (default 50, at most 500) and an opaque `?cursor=`.

The cursor holds the sort key of the last item returned; the next page starts strictly after
it, so inserts between requests cause no duplicates and no gaps.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from flask import request

from app.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: Any  # the sort key from the cursor, or None for the first page


def page_request(key_type: type = int) -> PageRequest:
    """The limit and cursor of the current request; 422 when either is malformed."""
    raw_limit = request.args.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ValidationFailed(
                "limit must be an integer.", [{"field": "limit", "message": "not an integer"}]
            ) from None
        if limit < 1:
            raise ValidationFailed(
                "limit must be at least 1.", [{"field": "limit", "message": "below 1"}]
            )
        limit = min(limit, MAX_LIMIT)
    cursor = request.args.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    # A cursor is only ever one we made, but a hand-edited one must not reach SQL as a wrong type.
    if after is not None and (type(after) is not key_type):
        raise ValidationFailed(
            "cursor is not one this API returned.", [{"field": "cursor", "message": "malformed"}]
        )
    return PageRequest(limit=limit, after=after)


def bad_cursor() -> ValidationFailed:
    """The error for a cursor this API did not make (or that was edited)."""
    return ValidationFailed(
        "cursor is not one this API returned.", [{"field": "cursor", "message": "malformed"}]
    )


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": key}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))["k"]
    except (ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise ValidationFailed(
            "cursor is not one this API returned.", [{"field": "cursor", "message": "malformed"}]
        ) from None


def paginate(rows: list, limit: int, key) -> tuple[list, str | None]:
    """Split `limit + 1` fetched rows into the page and the next page's cursor (None at the end)."""
    if len(rows) <= limit:
        return rows, None
    items = rows[:limit]
    return items, encode_cursor(key(items[-1]))
