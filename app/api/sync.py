"""/api/sync: ask for a sync, watch it."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.schemas.sync import SyncRequested, SyncStatusOut
from app.services import sync

bp = Blueprint("sync", __name__, url_prefix="/api/sync")
TAGS = ("sync",)


@bp.post("/imap/<int:account_id>")
@operation(
    "Sync an account now (returns the queued or running job: never a second one)",
    tags=TAGS,
    responses={202: ("The job that will sync the account.", SyncRequested)},
    errors=(404, 409),
)
def start_sync(account_id: int) -> Response:
    job_id = sync.request_sync(unit(), account_id)
    return respond(SyncRequested.of(account_id, job_id), 202)


@bp.get("/status/<int:account_id>")
@operation(
    "State, progress and last error of an account's sync",
    tags=TAGS,
    responses={200: ("The sync status.", SyncStatusOut)},
    errors=(404,),
)
def get_status(account_id: int) -> Response:
    return respond(SyncStatusOut.of(sync.sync_status(unit(), account_id)))
