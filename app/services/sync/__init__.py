"""The IMAP sync: every folder of an account into PostgreSQL, correct under change and failure.

Rules (RFC 3501, RFC 7162, RFC 6154; docs/sync.md describes them with the tests that prove
each):
- A copy is identified by (folder, UIDVALIDITY, UID), never by Message-ID.
- Per folder we persist uidvalidity, uidnext, highestmodseq and the flag-scan time, and
  advance them only in the transaction that stored what they stand for. Invariant: every
  message the server had below the stored `uidnext` (and still has) is in the database.
- Reading never changes the mailbox: EXAMINE and BODY.PEEK[] (app.mail.imap).
- New mail is fetched in batches bounded by count and bytes, newest first, one transaction
  per batch. A crash anywhere loses nothing and duplicates nothing: the next run diffs UID
  sets (server vs. database) and inserts are idempotent (ON CONFLICT DO NOTHING).
- UIDVALIDITY changed: the old copies are invalid. The new ones are loaded beside them (the
  unique key includes uidvalidity), then the old are dropped in one transaction; a server
  that resets it on every visit is stopped after `uidvalidity_reset_limit` times.
- Deletions: when the counts disagree, the UID sets are diffed and what the server no longer
  has is deleted (a moved message leaves here and arrives in its new folder).
- Flags: with CONDSTORE, `FETCH 1:* (FLAGS) (CHANGEDSINCE m)`; without, a full rescan in
  bounded batches when due. A flag change a user asked for and a worker has not written back
  yet is never undone by a sync.

Folders are LISTed every run; a new one is added, a vanished one deleted, and a rename (one
vanishing, one appearing with the same UIDVALIDITY) keeps its messages. \\Noselect skipped.

Failure isolation: a folder the server refuses is recorded on the folder and skipped; an
authentication failure marks the account `auth_failed`; a connection failure aborts the run
with the error recorded, and the job retries it with backoff.

Modules: `account` (a run over an account: lock, round, folder list), `folder` (one folder's
state machine, one method per step), `store` (the database writes, each one short
transaction), `rows` (rows built from what the server sent), `parsing` (the parse pool),
`control` (sync requests, status, the job).
"""

from app.services.sync.account import Syncer, SyncOutcome, lock_key
from app.services.sync.control import request_all, request_sync, run_sync_job, sync_status
from app.services.sync.folder import SyncLimits, SyncObserver
from app.services.sync.store import count_folder

__all__ = [
    "SyncLimits",
    "SyncObserver",
    "SyncOutcome",
    "Syncer",
    "count_folder",
    "lock_key",
    "request_all",
    "request_sync",
    "run_sync_job",
    "sync_status",
]
