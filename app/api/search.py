"""/api/sync/search: full-text search over the tenant's synced mail."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.api.validation import parse_query
from app.schemas.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.schemas.search import SearchPage, SearchParams
from app.services.search import search as search_mail

bp = Blueprint("search", __name__, url_prefix="/api/sync")
TAGS = ("search",)


@bp.get("/search")
@operation(
    "Search every folder of every account of the tenant (web-search syntax plus filters)",
    tags=TAGS,
    params=SearchParams,
    responses={200: ("A page of hits, newest first unless sort=relevance.", SearchPage)},
    errors=(422,),
)
def search() -> Response:
    params = parse_query(SearchParams)
    result = search_mail(
        unit(),
        params.query,
        sort=params.sort,
        limit=min(params.limit or DEFAULT_LIMIT, MAX_LIMIT),
        cursor=params.cursor,
    )
    return respond(SearchPage.of(result.hits, result.next_cursor))
