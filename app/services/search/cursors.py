"""Search cursors: where the next page starts, as short text with an exact pattern.

  d<date>_<id>                       newest first: the page starts after (date, id)
  r<rank>_<date>_<id>_<ceiling>      relevance: after (rank, id), among the candidates with
                                     id <= ceiling (the set the first page ranked)
<date> is microseconds since the epoch (UTC), or "n" for a message without a date; <rank> is
the ts_rank_cd value's float4 bits as 8 hex digits, so it comes back bit for bit.

Clients treat cursors as opaque. The pattern is published in the OpenAPI document, and every
string matching it is accepted: a date outside 0001-9999 is clamped, and a cursor continues
the order it came from whatever `sort` says (a relevance cursor on a query without words,
which has nothing to rank, continues newest first from its date and id). Anything else is a
422.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from app.errors import ValidationFailed

_DATE = "(?:n|-?[0-9]{1,18})"
_ID = "[0-9]{1,18}"
CURSOR_PATTERN = f"^(?:d{_DATE}_{_ID}|r[0-9a-f]{{8}}_{_DATE}_{_ID}_{_ID})$"
_CURSOR = re.compile(
    f"d(?P<d_date>{_DATE})_(?P<d_id>{_ID})"
    f"|r(?P<rank>[0-9a-f]{{8}})_(?P<r_date>{_DATE})_(?P<r_id>{_ID})_(?P<ceiling>{_ID})"
)
_PUBLISHED = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_FIRST = (datetime.min.replace(tzinfo=timezone.utc) - _EPOCH) // _MICROSECOND
_LAST = (datetime.max.replace(tzinfo=timezone.utc) - _EPOCH) // _MICROSECOND


@dataclass(frozen=True)
class Position:
    """The sort key of the last hit of a page."""

    date: datetime | None
    id: int
    rank: float | None = None  # relevance pages only
    ceiling: int | None = None


def encode(position: Position) -> str:
    date = "n" if position.date is None else str((position.date - _EPOCH) // _MICROSECOND)
    if position.rank is None:
        return f"d{date}_{position.id}"
    rank = struct.pack(">f", position.rank).hex()
    return f"r{rank}_{date}_{position.id}_{position.ceiling}"


def decode(cursor: str) -> Position:
    """The position `cursor` names; ValidationFailed unless it matches CURSOR_PATTERN."""
    # Acceptance is the published pattern's, as JSON Schema reads it (Python's `$` also
    # allows one final newline, which hypothesis-generated cursors may carry).
    match = _CURSOR.fullmatch(cursor.rstrip("\n")) if _PUBLISHED.search(cursor) else None
    if match is None:
        raise ValidationFailed(
            "cursor is not one this API returned.", [{"field": "cursor", "message": "malformed"}]
        )
    if match["d_id"] is not None:
        return Position(_date(match["d_date"]), int(match["d_id"]))
    (rank,) = struct.unpack(">f", bytes.fromhex(match["rank"]))
    return Position(_date(match["r_date"]), int(match["r_id"]), rank, int(match["ceiling"]))


def _date(text: str) -> datetime | None:
    if text == "n":
        return None
    return _EPOCH + min(max(int(text), _FIRST), _LAST) * _MICROSECOND
