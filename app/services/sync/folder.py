"""One run over one folder: the per-folder state machine, one method per step.

    status ── unchanged ──────────────────────────> done (nothing selected, nothing written yet)
      │ changed
    examine ── UIDVALIDITY reset too often ──────────────────────────> done (left as it was)
      │
    fetch_missing ── budget spent ───────────────────────────────────> stopped (resumes next run)
      │
    delete_gone ─> sync_flags ─> advance ───────────────────────────> done

New mail before deletions, deletions before the stored modseq moves (RFC 7162 3.1); the
folder's state (uidnext, highestmodseq) advances only in the transaction of its last step,
after everything it stands for is stored. An unchanged folder's state does not move at all:
only its last_synced_at, written by the account's run with the others' in one statement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.mail.imap import BatchAbandoned, FetchedMessage, Flags, FolderStatus, ImapSession
from app.services.sync.parsing import BatchParse
from app.services.sync.rows import FolderState, parsed_fields
from app.services.sync.store import SyncStore, now

log = logging.getLogger(__name__)
MB = 1024 * 1024


@dataclass(frozen=True)
class SyncLimits:
    batch_messages: int = 200
    batch_bytes: int = 20 * MB
    max_messages: int | None = 5000  # per run; None: no limit (the CLI)
    max_seconds: float | None = 240
    flag_batch: int = 5000
    # Without CONDSTORE flags can only be rescanned; how often each folder is.
    flag_scan_interval: timedelta = timedelta(minutes=10)
    uidvalidity_reset_limit: int = 3


class SyncObserver:
    """Hooks for progress display and tests; the default does nothing."""

    def folder_started(self, folder: str, missing: int) -> None:
        pass

    def batch_committed(self, folder: str, uids: list[int]) -> None:
        pass

    def folder_done(self, folder: str) -> None:
        pass


class Budget:
    """How much one run may still do (messages and seconds)."""

    def __init__(self, limits: SyncLimits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.fetched = 0

    def exhausted(self) -> bool:
        limits = self.limits
        if limits.max_messages is not None and self.fetched >= limits.max_messages:
            return True
        return (
            limits.max_seconds is not None and time.monotonic() - self.started >= limits.max_seconds
        )


class FolderRun:
    """Syncs one folder whose state was read at the start (`f`); `run()` once."""

    def __init__(
        self,
        imap: ImapSession,
        store: SyncStore,
        f: FolderState,
        limits: SyncLimits,
        budget: Budget,
        observer: SyncObserver,
        headers_only: Callable[[], bool] | None = None,
    ) -> None:
        self.imap = imap
        self.store = store
        self.f = f
        self.limits = limits
        self.budget = budget
        self.observer = observer
        # Asked before each batch: store new mail headers-only now (over quota)?
        self.headers_only = headers_only or (lambda: False)
        self.scan_due = not imap.condstore and (
            f.last_flag_scan_at is None or now() - f.last_flag_scan_at >= limits.flag_scan_interval
        )
        # Set by examine():
        self.selected: FolderStatus
        self.validity = 0
        self.rebuild = False  # UIDVALIDITY changed: the stored copies are invalid
        # Every UID the server has, when a step had to ask for all of them.
        self.server_uids: set[int] | None = None
        self.found_unchanged = False  # set by run(): nothing to do, nothing written

    def run(self, listed: FolderStatus | None = None) -> bool:
        """Sync the folder; False when the budget ran out before it was done.

        `listed`: the folder's STATUS from the folder list (LIST-STATUS), else STATUS is asked
        here. A folder found unchanged is not written to: `found_unchanged` says so, and the
        caller notes it with the others in one statement (`SyncStore.folders_unchanged`)."""
        if self.unchanged(listed or self.imap.status(self.f.remote_name)):
            self.found_unchanged = True
            self.observer.folder_done(self.f.name)
            return True
        if not self.examine():
            return True
        if not self.fetch_missing():
            return False
        self.delete_gone()
        scanned_at = self.sync_flags()
        self.advance(scanned_at)
        self.observer.folder_done(self.f.name)
        return True

    def unchanged(self, status: FolderStatus) -> bool:
        """STATUS says nothing happened since the last run (and no flag rescan is due)."""
        f = self.f
        return (
            f.uidvalidity == status.uidvalidity
            and f.uidnext == status.uidnext
            and f.messages_count == status.messages
            and (not self.imap.condstore or f.highestmodseq == status.highestmodseq)
            and not self.scan_due
        )

    def examine(self) -> bool:
        """Open the folder read-only and check its UIDVALIDITY; False: leave the folder be."""
        f = self.f
        self.selected = self.imap.examine(f.remote_name)
        self.validity = self.selected.uidvalidity
        self.rebuild = f.uidvalidity is not None and f.uidvalidity != self.validity
        if self.rebuild:
            if f.uidvalidity_resets >= self.limits.uidvalidity_reset_limit:
                self.store.update_folder(
                    f.id,
                    last_synced_at=now(),
                    last_error="UIDVALIDITY changes on every visit; folder left as it was",
                )
                return False
            log.warning(
                "UIDVALIDITY changed",
                extra={"folder": f.name, "old": f.uidvalidity, "new": self.validity},
            )
        if f.uidvalidity is None:
            # First sync: copies show as their batches commit (newest first), while uidnext
            # stays unset until the folder is complete.
            self.store.update_folder(f.id, uidvalidity=self.validity)
        return True

    def fetch_missing(self) -> bool:
        """New (or, after a crash or a reset, still missing) messages, newest first, in batches
        bounded by count and bytes; False when the budget ran out."""
        f = self.f
        incremental = not self.rebuild and f.uidvalidity is not None and f.uidnext is not None
        if incremental:
            # The invariant: everything below the stored uidnext is stored already.
            candidates = self.imap.uids(from_uid=f.uidnext)
            have = self.store.uids(f.id, self.validity, from_uid=f.uidnext)
        else:
            self.server_uids = candidates = self.imap.uids()
            have = self.store.uids(f.id, self.validity)
        missing = sorted(candidates - have, reverse=True)
        self.observer.folder_started(f.name, len(missing))
        if not missing:
            return True
        self.store.add_progress(f.account_id, total=len(missing))
        sizes = self.imap.sizes(missing)
        limit = self.imap.limits.max_message_bytes
        # Above MAX_MESSAGE_BYTES by the server's word: headers only, the body never read.
        large = [uid for uid in missing if sizes.get(uid, 0) > limit]
        whole = [uid for uid in missing if sizes.get(uid, 0) <= limit]
        # A size the server did not give counts as a whole batch: such a message goes alone.
        known = {uid: sizes.get(uid, self.limits.batch_bytes) for uid in whole}
        for batch in batches(whole, known, self.limits.batch_messages, self.limits.batch_bytes):
            if self.budget.exhausted():
                return False
            self._fetch(batch)
        for batch in chunks(large, self.limits.batch_messages):
            if self.budget.exhausted():
                return False
            self._store(self._headers(batch))
        return True

    def _fetch(self, batch: list[int]) -> None:
        """Fetch and store one batch of bodies (headers-only when over quota).

        Each message goes to the parse pool as soon as it is read; the batch's raw bytes are
        inserted while the pool finishes, and its rows wait for the parse only when they are
        built. The next batch is fetched after this one is committed.

        A server may lie about sizes: the transport refuses a body above MAX_MESSAGE_BYTES
        when it is announced, and a batch that outgrows its bytes, dropping the connection
        (`BatchAbandoned`). What came whole is stored; after reconnecting, the rest is
        fetched one by one, and a message refused alone is the one too large: it is stored
        headers-only, and the sync goes on.
        """
        if self.headers_only():
            self._store(self._headers(batch), over_quota=True)
            return
        parse = BatchParse(parsed_fields, len(batch))
        try:
            fetched = self.imap.fetch(
                batch, self.limits.batch_bytes, on_message=lambda m: parse.submit(m.uid, m.raw)
            )
            self._store(fetched, parse=parse)
            return
        except BatchAbandoned as exc:
            self._store(exc.received, parse=parse)
            rest = exc.remaining
        finally:
            parse.cancel()
        self.imap.reconnect()
        if len(batch) == 1:
            self._store(self._headers(rest))
            return
        for uid in rest:
            try:
                self._store(self.imap.fetch([uid], self.limits.batch_bytes))
            except BatchAbandoned:
                log.warning(
                    "message above MAX_MESSAGE_BYTES despite its size; stored headers-only",
                    extra={"folder": self.f.name, "uid": uid},
                )
                self.imap.reconnect()
                self._store(self._headers([uid]))

    def _headers(self, uids: list[int]) -> list[FetchedMessage]:
        """Headers-only copies of `uids`; a header the server will not send within bounds
        leaves a copy with none (never a retry forever)."""
        try:
            return self.imap.fetch_headers(uids)
        except BatchAbandoned as exc:
            found, rest = exc.received, exc.remaining
        self.imap.reconnect()
        for uid in rest:
            try:
                found += self.imap.fetch_headers([uid])
            except BatchAbandoned:
                self.imap.reconnect()
                found.append(_bare(uid))
        return found

    def _store(
        self,
        fetched: list[FetchedMessage],
        over_quota: bool = False,
        parse: BatchParse | None = None,
    ) -> None:
        f = self.f
        self.store.store_batch(f, self.validity, fetched, over_quota=over_quota, parse=parse)
        self.budget.fetched += len(fetched)
        self.observer.batch_committed(f.name, [m.uid for m in fetched])

    def delete_gone(self) -> None:
        """When the counts disagree, diff the UID sets and delete what the server no longer
        has (a moved message leaves here and arrives in its new folder). After a UIDVALIDITY
        reset the old copies go in `advance`, with the state."""
        if self.rebuild:
            return
        stored = self.store.count(self.f.id, self.validity)
        if self.server_uids is None and stored != self.selected.messages:
            self.server_uids = self.imap.uids()
        if self.server_uids is not None and stored != len(self.server_uids):
            self.store.delete_gone(self.f.id, self.validity, self.server_uids)

    def sync_flags(self) -> datetime | None:
        """Flags changed by other clients (rows just fetched have fresh ones already); when
        flags were rescanned in full, the time of the scan."""
        f, imap = self.f, self.imap
        if self.rebuild or f.uidvalidity is None:
            # Everything was just fetched with its flags.
            return None if imap.condstore else now()
        if imap.condstore:
            if f.highestmodseq is not None and self.selected.highestmodseq != f.highestmodseq:
                changes = imap.flags("1:*", changed_since=f.highestmodseq)
                self.store.apply_flags(f.id, self.validity, changes)
            return None
        if not self.scan_due:
            return None
        stored = sorted(self.store.uids(f.id, self.validity))
        for chunk in chunks(stored, self.limits.flag_batch):
            self.store.apply_flags(f.id, self.validity, imap.flags(chunk))
        return now()

    def advance(self, scanned_at: datetime | None) -> None:
        """Advance the folder's state with its counts, in one transaction."""
        f = self.f
        values: dict[str, Any] = {
            "uidvalidity": self.validity,
            "uidnext": self.selected.uidnext,
            "highestmodseq": self.selected.highestmodseq,
            "last_synced_at": now(),
            "last_error": None,
            "uidvalidity_resets": f.uidvalidity_resets + 1 if self.rebuild else 0,
        }
        if scanned_at is not None:
            values["last_flag_scan_at"] = scanned_at
        # After a reset the new copies are all in: the invalid ones go with the state change.
        self.store.advance(f, self.validity, values, drop_others=self.rebuild)


def _bare(uid: int) -> FetchedMessage:
    """A copy known only by its UID (a server that would not send even its header)."""
    return FetchedMessage(
        uid=uid,
        flags=Flags.parse(()),
        internal_date=None,
        size=0,
        raw=b"",
        modseq=None,
        too_large=True,
    )


def batches(
    uids: list[int], sizes: dict[int, int], count: int, max_bytes: int
) -> Iterator[list[int]]:
    """Consecutive groups of `uids` of at most `count` messages and about `max_bytes` bytes."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
