"""Every closed set of values the service stores or reports, declared once.

Each is a `StrEnum` (as RQ's `JobStatus`): a member is equal to its text, so it is stored, logged
and written into JSON as that text. Models build their column types and CHECK constraints from
these, schemas publish them in the OpenAPI document, and services compare against members,
never against string literals.
"""

from __future__ import annotations

from enum import StrEnum


class AccountState(StrEnum):
    ACTIVE = "active"
    # The server refused the credentials: no syncs until new ones are given.
    AUTH_FAILED = "auth_failed"
    DISABLED = "disabled"


class Security(StrEnum):
    """How a connection to a mail server is secured."""

    SSL = "ssl"  # implicit TLS (IMAPS 993, submissions 465)
    STARTTLS = "starttls"
    NONE = "none"


class FolderRole(StrEnum):
    """Special-use roles (RFC 6154), or guessed from common names."""

    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    JUNK = "junk"
    ARCHIVE = "archive"


class SyncState(StrEnum):
    """An account's sync as the API reports it (derived from facts, never stored)."""

    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"


class ChangeKind(StrEnum):
    """A change a user asked for, written back to the IMAP server by a worker."""

    FLAGS = "flags"
    MOVE = "move"
    DELETE = "delete"


class ChangeState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class DraftState(StrEnum):
    DRAFT = "draft"
    SENT = "sent"  # read-only from now on: its outbox entry has the message


class OutboxState(StrEnum):
    """queued -> sending -> sent | failed | uncertain; a transient failure before the final "."
    of DATA goes back to queued with a later next_attempt_at."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    # The whole message may have reached the server: never sent again without the user.
    UNCERTAIN = "uncertain"


class SentCopy(StrEnum):
    """The copy APPENDed to the Sent folder after a message was sent."""

    NONE = "none"
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Resolution(StrEnum):
    """How a user settles an outbox entry."""

    SENT = "sent"  # an uncertain entry: the user found it was delivered
    FAILED = "failed"  # an uncertain entry: it was not
    RETRY = "retry"  # an uncertain or failed entry: send it again, knowingly


def check_in(column: str, values: type[StrEnum]) -> str:
    """SQL for a CHECK constraint: `column` holds one of the enum's values."""
    return f"{column} IN ({', '.join(repr(member.value) for member in values)})"
