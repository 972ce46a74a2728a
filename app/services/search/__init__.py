"""Full-text search over a tenant's synced mail (GET /api/sync/search).

The query language is in `syntax`, its SQL in `statements`, snippets in `snippets`. Results
are current copies only (a message row whose uidvalidity is its folder's), newest first by
(date, id) or, with sort=relevance, the best of the newest RELEVANCE_CANDIDATES matches by
ts_rank_cd. Pages are keyset-based: a cursor holds the sort key of the last hit of the
previous page (`cursors`), so messages stored between requests cause neither duplicates nor
gaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Row, text

from app.context import Unit
from app.models import Message
from app.services.search import cursors
from app.services.search.cursors import Position
from app.services.search.snippets import Highlighter
from app.services.search.statements import (
    RELEVANCE_CANDIDATES,
    by_date,
    by_relevance,
    conditions,
    load_folders,
)
from app.services.search.syntax import QuerySyntaxError, parse
from app.tenancy import bound_tenant

__all__ = ["RELEVANCE_CANDIDATES", "Hit", "QuerySyntaxError", "SearchPage", "search"]

Sort = Literal["date", "relevance"]


@dataclass(frozen=True)
class Hit:
    message: Message  # the summary's columns loaded, nothing else
    folder: str
    snippet: str


@dataclass(frozen=True)
class SearchPage:
    hits: list[Hit]
    next_cursor: str | None  # where the next page starts; None after the last page


def search(
    unit: Unit,
    query: str,
    *,
    sort: Sort = "date",
    limit: int = 50,
    cursor: str | None = None,
) -> SearchPage:
    """One page of the tenant's messages matching `query`; ValidationFailed for bad input."""
    session = unit.session
    if bound_tenant(session) is None:
        # The statements rely on the tenant filter app.tenancy adds: never search unscoped.
        raise RuntimeError("search needs a tenant-bound session")
    parsed = parse(query)
    after = cursors.decode(cursor) if cursor is not None else None
    # Plans depend on how frequent the words are, so never reuse a generic plan for search
    # (psycopg prepares a statement after 5 runs; PostgreSQL may then switch to a generic one).
    session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    folders = load_folders(session)
    cond = conditions(parsed, folders)
    # A cursor continues the order it came from; without words there is nothing to rank.
    wants_rank = after.rank is not None if after is not None else sort == "relevance"
    rows: Sequence[Row[Message, str | None, *tuple[Any, ...]]]  # with rank, ceiling if ranked
    if wants_rank and cond.rank_query is not None:
        # A cursor here is a relevance cursor (wants_rank), so it has a rank.
        ranked = (after.rank, after.id) if after is not None and after.rank is not None else None
        ceiling = after.ceiling if after is not None else None
        rows = session.execute(by_relevance(cond, ranked, ceiling, limit + 1)).all()
        # The first page's ceiling stays: later pages rank the same candidates.
        positions = [
            Position(r.Message.date, r.Message.id, r.rank, ceiling or r.ceiling) for r in rows
        ]
    else:
        dated = (after.date, after.id) if after is not None else None
        rows = session.execute(by_date(cond, dated, limit + 1)).all()
        positions = [Position(r.Message.date, r.Message.id) for r in rows]
    next_cursor = cursors.encode(positions[limit - 1]) if len(rows) > limit else None
    highlighter = Highlighter(parsed.highlights())
    hits = []
    for row in rows[:limit]:
        message = row.Message
        folder = folders.get(message.folder_id)
        # A UIDVALIDITY reload that began after load_folders(): its new copies are not
        # current yet. Dropped here; the cursor still moves past them (no gap, a short page).
        if folder is None or folder.uidvalidity != message.uidvalidity:
            continue
        snippet = highlighter.snippet(row.body_head, message.subject)
        hits.append(Hit(message, folder.name, snippet))
    return SearchPage(hits, next_cursor)
