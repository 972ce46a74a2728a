"""What the sync writes to PostgreSQL, each write one short transaction of its own.

The IMAP connection is held for a whole run; database sessions only for one step, so a slow
server never holds a transaction open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from app.mail.imap import FetchedMessage, FlagChange
from app.models import Account, Folder, Message, MessageRaw
from app.services.indexing import defer_search
from app.services.sync.parsing import BatchParse
from app.services.sync.rows import FolderState, message_row
from app.states import ChangeKind, ChangeState

# Message rows per INSERT while a batch's parse is still arriving.
ROWS_PER_INSERT = 25


def _insert_messages(s: Session, rows: list[dict[str, Any]]) -> None:
    """executemany of one cached statement (psycopg pipelines it), not a statement compiled
    per batch from every row's values."""
    if rows:
        s.execute(
            insert(Message).on_conflict_do_nothing(
                index_elements=["folder_id", "uidvalidity", "uid"]
            ),
            rows,
        )


# The server's flags on the copies of one folder. A flag change the user asked for and a worker
# has not written back yet wins over the server's older state: never undone by a sync. A copy
# that has these flags already (one just fetched) is not written again.
APPLY_FLAGS = text(
    """
    UPDATE messages AS m
    SET seen = c.seen, flagged = c.flagged, answered = c.answered, draft = c.draft,
        keywords = c.keywords, modseq = c.modseq
    FROM (
        SELECT t.uid, t.seen, t.flagged, t.answered, t.draft, t.modseq,
               ARRAY(SELECT jsonb_array_elements_text(t.keywords::jsonb)) AS keywords
        FROM unnest(
            CAST(:uids AS bigint[]), CAST(:seen AS boolean[]), CAST(:flagged AS boolean[]),
            CAST(:answered AS boolean[]), CAST(:draft AS boolean[]), CAST(:keywords AS text[]),
            CAST(:modseqs AS bigint[])
        ) AS t(uid, seen, flagged, answered, draft, keywords, modseq)
    ) AS c
    WHERE m.folder_id = :folder_id AND m.uidvalidity = :validity AND m.uid = c.uid
      AND NOT EXISTS (
          SELECT 1 FROM message_changes AS mc
          WHERE mc.message_id = m.id AND mc.kind = :kind AND mc.state = :pending
      )
      AND (m.seen, m.flagged, m.answered, m.draft, m.keywords, m.modseq)
          IS DISTINCT FROM (c.seen, c.flagged, c.answered, c.draft, c.keywords, c.modseq)
    """
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def count_folder(session: Session, folder_id: int) -> Folder:
    """Store the message and unread counts of the folder's current copies."""
    folder = session.get_one(Folder, folder_id)
    current = (
        select(Message.seen)
        .where(Message.folder_id == folder_id, Message.uidvalidity == folder.uidvalidity)
        .subquery()
    )
    total, unread = session.execute(
        select(func.count(), func.count().filter(~current.c.seen))
    ).one()
    folder.messages_count, folder.unread_count = total, unread
    return folder


class SyncStore:
    """The sync's reads and writes, on a session factory."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def uids(
        self,
        folder_id: int,
        validity: int,
        from_uid: int | None = None,
        session: Session | None = None,
    ) -> set[int]:
        """UIDs of the folder's copies under `validity` (from `from_uid` on)."""
        query = select(Message.uid).where(
            Message.folder_id == folder_id, Message.uidvalidity == validity
        )
        if from_uid is not None:
            query = query.where(Message.uid >= from_uid)
        if session is not None:
            return set(session.scalars(query))
        with self.sessions() as s:
            return set(s.scalars(query))

    def update_folder(self, folder_id: int, **values: Any) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Folder).where(Folder.id == folder_id).values(**values))

    def folders_unchanged(self, account_id: int, folder_ids: list[int]) -> None:
        """Folders whose STATUS showed no change: nothing was stored, so their counts stand (a
        local flag change recounts its folder itself). One statement for all of them, and
        the round's progress once. Nothing else of theirs moves."""
        if not folder_ids:
            return
        with self.sessions.begin() as s:
            self.note_unchanged(s, account_id, folder_ids)

    @staticmethod
    def note_unchanged(s: Session, account_id: int, folder_ids: list[int]) -> None:
        """In session `s`: the folders marked synced now, and the round's progress."""
        s.execute(
            update(Folder)
            .where(Folder.id.in_(folder_ids), Folder.account_id == account_id)
            .values(last_synced_at=now(), last_error=None)
        )
        s.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(sync_folders_done=Account.sync_folders_done + len(folder_ids))
        )

    def add_progress(self, account_id: int, total: int) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Account)
                .where(Account.id == account_id)
                .values(sync_messages_total=Account.sync_messages_total + total)
            )

    def store_batch(
        self,
        f: FolderState,
        validity: int,
        fetched: list[FetchedMessage],
        over_quota: bool = False,
        parse: BatchParse | None = None,
    ) -> None:
        """One batch, one transaction: raw bytes (deduplicated), parsed rows, progress.

        `parse`: the batch's parse, started as it was fetched (the raw bytes are inserted
        while it runs); without it, each message is parsed here. Inserts are idempotent (ON
        CONFLICT DO NOTHING): a batch stored by a run that then crashed is skipped by the next.
        The rows are stored without their search vector: readable once this commits,
        searchable once the indexing job (app.services.indexing) has been over them.
        """
        if not fetched:
            return
        digests = [hashlib.sha256(m.raw).digest() for m in fetched]
        raws = {digest: m.raw for digest, m in zip(digests, fetched, strict=True)}
        with self.sessions.begin() as s:
            defer_search(s)
            # One multi-row INSERT (narrow rows, cheap to build): the tenant_usage trigger runs
            # once per statement, so an executemany would run it once per raw. (INSERT ...
            # SELECT unnest(bytea[]) cost more CPU in B1, here and in PostgreSQL.)
            s.execute(
                insert(MessageRaw)
                .values(
                    [
                        {
                            "account_id": f.account_id,
                            "tenant_id": f.tenant_id,
                            "sha256": d,
                            "data": v,
                        }
                        for d, v in raws.items()
                    ]
                )
                .on_conflict_do_nothing(index_elements=["account_id", "sha256"])
            )
            raw_ids: dict[bytes, int] = {
                digest: raw_id
                for digest, raw_id in s.execute(
                    select(MessageRaw.sha256, MessageRaw.id).where(
                        MessageRaw.account_id == f.account_id, MessageRaw.sha256.in_(list(raws))
                    )
                ).all()
            }
            # Rows go in as their parse arrives, a few at a time: PostgreSQL indexes the first
            # ones while the pool still parses the rest.
            rows: list[dict[str, Any]] = []
            for digest, m in zip(digests, fetched, strict=True):
                fields = parse.result(m.uid, m.raw) if parse is not None else None
                rows.append(message_row(f, validity, m, raw_ids[digest], over_quota, fields=fields))
                if len(rows) >= ROWS_PER_INSERT:
                    _insert_messages(s, rows)
                    rows = []
            _insert_messages(s, rows)
            s.execute(
                update(Account)
                .where(Account.id == f.account_id)
                .values(sync_messages_synced=Account.sync_messages_synced + len(fetched))
            )

    def count(self, folder_id: int, validity: int) -> int:
        """How many copies of the folder under `validity` are stored."""
        with self.sessions() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.folder_id == folder_id, Message.uidvalidity == validity)
                )
                or 0
            )

    def delete_gone(self, folder_id: int, validity: int, server: set[int]) -> None:
        """Delete the copies whose UIDs the server no longer has (expunged or moved away)."""
        with self.sessions.begin() as s:
            gone = self.uids(folder_id, validity, session=s) - server
            if gone:
                s.execute(
                    delete(Message).where(
                        Message.folder_id == folder_id,
                        Message.uidvalidity == validity,
                        Message.uid.in_(gone),
                    )
                )

    def apply_flags(self, folder_id: int, validity: int, changes: Iterable[FlagChange]) -> None:
        """The server's flags on our copies, except where a user's change is still pending: one
        statement for all of them (a row per change, unnested from arrays)."""
        changes = list(changes)
        if not changes:
            return
        params = {
            "folder_id": folder_id,
            "validity": validity,
            "uids": [c.uid for c in changes],
            "seen": [c.flags.seen for c in changes],
            "flagged": [c.flags.flagged for c in changes],
            "answered": [c.flags.answered for c in changes],
            "draft": [c.flags.draft for c in changes],
            # Keywords as JSON text: an array of arrays cannot be unnested row by row.
            "keywords": [json.dumps(list(c.flags.keywords)) for c in changes],
            "modseqs": [c.modseq for c in changes],
            "kind": ChangeKind.FLAGS.value,
            "pending": ChangeState.PENDING.value,
        }
        with self.sessions.begin() as s:
            s.execute(APPLY_FLAGS, params)

    def advance(
        self, f: FolderState, validity: int, values: dict[str, Any], drop_others: bool
    ) -> None:
        """Move the folder's state forward with its counts, and one more folder done in the
        round's progress, in one transaction; with `drop_others`, delete the copies of another
        UIDVALIDITY in the same transaction, so the folder never shows neither or both."""
        with self.sessions.begin() as s:
            if drop_others:
                s.execute(
                    delete(Message).where(
                        Message.folder_id == f.id, Message.uidvalidity != validity
                    )
                )
            s.execute(update(Folder).where(Folder.id == f.id).values(**values))
            count_folder(s, f.id)
            s.execute(
                update(Account)
                .where(Account.id == f.account_id)
                .values(sync_folders_done=Account.sync_folders_done + 1)
            )
