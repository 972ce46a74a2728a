"""Search parameters and hits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page
from app.schemas.messages import MessageSummary, summary_fields
from app.services.search import Hit
from app.services.search.cursors import CURSOR_PATTERN
from app.services.search.grammar import QUERY_SCHEMA

QUERY_HELP = (
    'Words, "quoted phrases", -exclusion and OR (binds tighter than the implicit AND: '
    "`a b OR c` is a AND (b OR c)), plus filters from: to: (a substring of the name or "
    "address; to: covers cc and bcc), subject: (words of the subject), has:attachment, "
    "is:unread, is:flagged, in:FOLDER (the full name, INBOX in any case, or a role: inbox sent "
    "drafts trash junk archive), after:YYYY-MM-DD (on or after, UTC), before:YYYY-MM-DD "
    '(before, UTC), account:ID; `-` negates a filter too; values may be quoted (from:"Jörg '
    'Müller"). Accents and case do not matter ("munchen" finds "München"). Terms are separated '
    "by ASCII white space; words without a letter or digit are ignored; an empty query lists "
    "all mail. The pattern is the exact syntax: anything else is a 422 naming the problem. "
    "Newly synced mail is listed and readable at once, and matched by words, phrases and "
    "subject: once it is indexed, shortly after (until then it matches no word, so an "
    "exclusion lets it through; the other filters match it at once): "
    "`progress.messages_indexing` of GET /api/sync/status/{account_id} counts what is left."
)


class SearchParams(BaseModel):
    """The query string of GET /api/sync/search."""

    # Query strings are text: "20" is the limit 20 (lax, unlike JSON bodies). The query's and
    # the cursor's own checks name the problem better than a pattern mismatch would, so the
    # patterns are published here and enforced by the service.
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description=QUERY_HELP, json_schema_extra=QUERY_SCHEMA)
    sort: Literal["date", "relevance"] = Field(
        "date",
        description="date: newest first. relevance: the best of the 1000 newest matches "
        "(ts_rank_cd: subject over addresses over body); newest first when the query has no "
        "words. With a cursor, the cursor's order continues.",
    )
    limit: int | None = Field(
        None, ge=1, description="Hits per page: 50 by default, values above 500 count as 500."
    )
    cursor: str | None = Field(
        None,
        description="next_cursor of the previous page (opaque).",
        json_schema_extra={"pattern": CURSOR_PATTERN},
    )


class SearchHit(MessageSummary):
    snippet: str = Field(
        description="Plain text, HTML-escaped, with the matched words in <mark>...</mark>."
    )


class SearchPage(Page[SearchHit]):
    @classmethod
    def of(cls, hits: list[Hit], next_cursor: str | None) -> SearchPage:
        items = [{**summary_fields(h.message, h.folder), "snippet": h.snippet} for h in hits]
        return cls.model_validate({"items": items, "next_cursor": next_cursor})
