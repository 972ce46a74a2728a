"""/api/sync/search: full-text search over the tenant's synced mail."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.api.openapi import operation
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from app.api.validation import parse_query
from app.db import get_session
from app.schemas.messages import summary_model
from app.schemas.search import SearchHit, SearchPage, SearchParams
from app.services import search as search_service

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
def search():
    params = parse_query(SearchParams)
    result = search_service.search(
        get_session(),
        params.query,
        sort=params.sort,
        limit=min(params.limit or DEFAULT_LIMIT, MAX_LIMIT),
        cursor=params.cursor,
    )
    items = [
        SearchHit(
            **summary_model(hit.message, hit.folder).model_dump(), snippet=hit.snippet
        ).model_dump(mode="json", by_alias=True)
        for hit in result.hits
    ]
    return jsonify({"items": items, "next_cursor": result.next_cursor})
