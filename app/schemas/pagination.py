"""Keyset pagination: `?limit=` (default 50, at most 500) and an opaque `?cursor=`.

The cursor holds the sort key of the last item returned; the next page starts strictly after
it, so inserts between requests cause no duplicates and no gaps. Each kind of key has a short
text form with an exact pattern, published in the OpenAPI document; every string matching it
is accepted (it names a position, any position is a valid place to start), anything else is a
422:
  ID      lists by id:            the id in decimal
  NAME    lists by name:          the name's UTF-8 bytes in lower-case hex
  DATE_ID lists newest first:     the search cursor's date form, d<microseconds>_<id>
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ValidationFailed
from app.services.search import cursors

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
BIGINT_MAX = 2**63 - 1
LIMIT_HELP = "Items per page: 50 by default, values above 500 count as 500."
CURSOR_HELP = "next_cursor of the previous page (opaque)."
Row = TypeVar("Row")


@dataclass(frozen=True)
class Codec:
    pattern: str
    encode: Any  # key -> str
    decode: Any  # str (matching the pattern) -> key


def _name(cursor: str) -> str:
    # Any hex is accepted: bytes that are not UTF-8 still name a place in the order.
    return bytes.fromhex(cursor).decode("utf-8", "replace").replace("\x00", "")


def _date_id(cursor: str) -> tuple[datetime | None, int]:
    position = cursors.decode(cursor)
    return position.date, position.id


ID = Codec("^[0-9]{1,19}$", str, lambda c: min(int(c), BIGINT_MAX))
NAME = Codec("^(?:[0-9a-f]{2}){1,2000}$", lambda name: name.encode().hex(), _name)
DATE_ID = Codec(
    "^d(?:n|-?[0-9]{1,18})_[0-9]{1,18}$",
    lambda key: cursors.encode(cursors.Position(*key)),
    _date_id,
)


class PageParams(BaseModel):
    """`limit` and `cursor` of a list (validated by the view's parse_query); subclasses
    publish their cursor's pattern with `cursor_field(codec)` and add their own parameters."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, ge=1, description=LIMIT_HELP)
    cursor: str | None = Field(None, description=CURSOR_HELP)


def cursor_field(codec: Codec) -> Any:
    return Field(None, description=CURSOR_HELP, json_schema_extra={"pattern": codec.pattern})


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: Any  # the sort key from the cursor, or None for the first page


def page_request(params: PageParams, codec: Codec = ID) -> PageRequest:
    """The page `params` asks for; 422 when its cursor does not match the codec's pattern."""
    limit = min(params.limit or DEFAULT_LIMIT, MAX_LIMIT)
    after = None
    if params.cursor is not None:
        # Accepted as the published pattern reads in JSON Schema validators built on Python's
        # `re`, where `$` also matches before one final newline.
        if not re.search(codec.pattern, params.cursor):
            raise bad_cursor()
        after = codec.decode(params.cursor.rstrip("\n"))
    return PageRequest(limit=limit, after=after)


def bad_cursor() -> ValidationFailed:
    """The error for a cursor this API did not make (or that was edited)."""
    return ValidationFailed(
        "cursor is not one this API returned.", [{"field": "cursor", "message": "malformed"}]
    )


def paginate(
    rows: list[Row], limit: int, key: Callable[[Row], object], codec: Codec = ID
) -> tuple[list[Row], str | None]:
    """Split `limit + 1` fetched rows into the page and the next page's cursor (None at the end)."""
    if len(rows) <= limit:
        return rows, None
    items = rows[:limit]
    return items, codec.encode(key(items[-1]))
