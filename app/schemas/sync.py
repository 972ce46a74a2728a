"""Sync requests, sync status and folders."""

from pydantic import BaseModel

from app.schemas.common import Page, Timestamp
from app.states import FolderRole, SyncState


class SyncRequested(BaseModel):
    job_id: str
    status_url: str


class SyncProgress(BaseModel):
    folders_done: int
    folders_total: int
    messages_synced: int
    messages_total: int


class FolderSummary(BaseModel):
    name: str
    messages: int
    last_synced_at: Timestamp | None


class SyncStatusOut(BaseModel):
    account_id: int
    state: SyncState
    last_synced_at: Timestamp | None
    last_error: str | None
    progress: SyncProgress
    folders: list[FolderSummary]


class FolderOut(BaseModel):
    name: str
    role: FolderRole | None
    messages: int
    unread: int
    last_synced_at: Timestamp | None


class FolderPage(Page[FolderOut]):
    pass
