"""Sync requests, sync status and folders."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.models import Folder
from app.schemas.common import Page, Timestamp
from app.schemas.pagination import NAME, PageParams, cursor_field
from app.services.sync.control import SyncStatus
from app.states import FolderRole, SyncState


class SyncRequested(BaseModel):
    job_id: str
    status_url: str

    @classmethod
    def of(cls, account_id: int, job_id: str) -> SyncRequested:
        return cls(job_id=job_id, status_url=f"/api/sync/status/{account_id}")


class SyncProgress(BaseModel):
    folders_done: int
    folders_total: int
    messages_synced: int
    messages_total: int
    messages_indexing: int = Field(
        description="Messages stored and readable whose words are not searchable yet (the "
        "indexing job computes them shortly after the sync stored them; search filters "
        "other than words already find them)."
    )


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

    @classmethod
    def of(cls, status: SyncStatus) -> SyncStatusOut:
        account = status.account
        return cls(
            account_id=account.id,
            state=status.state,
            last_synced_at=account.last_synced_at,
            last_error=status.last_error,
            progress=SyncProgress(
                folders_done=account.sync_folders_done,
                folders_total=account.sync_folders_total,
                messages_synced=account.sync_messages_synced,
                messages_total=account.sync_messages_total,
                messages_indexing=status.unindexed,
            ),
            folders=[
                FolderSummary(name=f.name, messages=f.messages, last_synced_at=f.last_synced_at)
                for f in status.folders
            ],
        )


class FolderOut(BaseModel):
    name: str
    role: FolderRole | None
    messages: int
    unread: int
    last_synced_at: Timestamp | None

    @classmethod
    def of(cls, folder: Folder) -> FolderOut:
        return cls(
            name=folder.name,
            role=folder.role,
            messages=folder.messages_count,
            unread=folder.unread_count,
            last_synced_at=folder.last_synced_at,
        )


class FolderPage(Page[FolderOut]):
    pass


class FolderListParams(PageParams):
    cursor: str | None = cursor_field(NAME)
