"""/api/sync: ask for a sync, watch it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import select

from app.api.openapi import operation
from app.db import get_session
from app.models import Folder
from app.schemas.sync import SyncRequested, SyncStatusOut
from app.services.accounts import get_account
from app.services.sync_control import request_sync, sync_status

bp = Blueprint("sync", __name__, url_prefix="/api/sync")
TAGS = ("sync",)


@bp.post("/imap/<int:account_id>")
@operation(
    "Sync an account now (returns the queued or running job: never a second one)",
    tags=TAGS,
    responses={202: ("The job that will sync the account.", SyncRequested)},
    errors=(404, 409),
)
def start_sync(account_id: int):
    session = get_session()
    account = get_account(session, account_id)
    job_id = request_sync(session, current_app.extensions["redis"], account)
    body = SyncRequested(job_id=job_id, status_url=f"/api/sync/status/{account_id}")
    return jsonify(body.model_dump()), 202


@bp.get("/status/<int:account_id>")
@operation(
    "State, progress and last error of an account's sync",
    tags=TAGS,
    responses={200: ("The sync status.", SyncStatusOut)},
    errors=(404,),
)
def get_status(account_id: int):
    session = get_session()
    account = get_account(session, account_id)
    status = sync_status(session, current_app.extensions["redis"], account)
    folders = session.scalars(
        select(Folder).where(Folder.account_id == account.id).order_by(Folder.name)
    )
    body = SyncStatusOut(
        account_id=account.id,
        state=status.state,
        last_synced_at=account.last_synced_at,
        last_error=status.last_error,
        progress={
            "folders_done": account.sync_folders_done,
            "folders_total": account.sync_folders_total,
            "messages_synced": account.sync_messages_synced,
            "messages_total": account.sync_messages_total,
        },
        folders=[
            {"name": f.name, "messages": f.messages_count, "last_synced_at": f.last_synced_at}
            for f in folders
        ],
    )
    return jsonify(body.model_dump(mode="json"))
