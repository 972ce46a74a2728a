"""Rows the sync stores: a folder's state as read at the start of its run, and a message row
built from what the server sent (headers, addresses, bodies, attachment metadata, flags)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.mail.imap import FetchedMessage
from app.mail.mime import Address, parse_message
from app.models import Folder


@dataclass(frozen=True)
class FolderState:
    """A folder's stored sync state, read once at the start of its run."""

    id: int
    account_id: int
    tenant_id: int
    name: str
    remote_name: str
    uidvalidity: int | None
    uidnext: int | None
    highestmodseq: int | None
    messages_count: int
    last_flag_scan_at: datetime | None
    uidvalidity_resets: int
    last_synced_at: datetime | None = None

    @classmethod
    def of(cls, folder: Folder) -> FolderState:
        return cls(
            folder.id,
            folder.account_id,
            folder.tenant_id,
            folder.name,
            folder.remote_name,
            folder.uidvalidity,
            folder.uidnext,
            folder.highestmodseq,
            folder.messages_count,
            folder.last_flag_scan_at,
            folder.uidvalidity_resets,
            folder.last_synced_at,
        )


def _addresses(values: list[Address]) -> list[dict[str, str | None]]:
    return [{"name": a.name, "email": a.email} for a in values]


def parsed_fields(raw: bytes) -> dict[str, Any]:
    """The columns of a `messages` row that come from parsing `raw` (what the parse pool
    computes: plain values, cheap to send back between processes)."""
    parsed = parse_message(raw)
    # What search's `to:` and words match (migration 0005 backfills the same format).
    recipients = ", ".join(
        f"{a.name} <{a.email}>" if a.name else a.email
        for a in [*parsed.to, *parsed.cc, *parsed.bcc]
    )
    return {
        "date": parsed.date,
        "subject": parsed.subject,
        "from_name": parsed.from_.name if parsed.from_ else None,
        "from_email": parsed.from_.email if parsed.from_ else None,
        "to_addrs": _addresses(parsed.to),
        "cc_addrs": _addresses(parsed.cc),
        "bcc_addrs": _addresses(parsed.bcc),
        "recipients": recipients or None,
        "reply_to": _addresses(parsed.reply_to),
        "message_id_header": parsed.message_id,
        "in_reply_to": parsed.in_reply_to,
        "references": parsed.references,
        "headers": [[name, value] for name, value in parsed.headers],
        "text_body": parsed.text,
        "html_body": parsed.html,
        "attachments": [
            {
                "index": a.index,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "content_id": a.content_id,
                "inline": a.inline,
            }
            for a in parsed.attachments
        ],
        "has_attachments": any(not a.inline for a in parsed.attachments),
        "parse_error": parsed.parse_error,
    }


# Only the header was read: no body, so nothing to say about one.
_NO_BODY: dict[str, Any] = {
    "text_body": None,
    "html_body": None,
    "attachments": [],
    "has_attachments": False,
    "parse_error": None,
}


def message_row(
    f: FolderState,
    validity: int,
    m: FetchedMessage,
    raw_id: int,
    over_quota: bool = False,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `messages` row of one fetched copy (its raw bytes stored as `raw_id`; `fields`:
    `parsed_fields(m.raw)` when it was computed already, e.g. by the parse pool).

    A copy fetched headers-only (`m.too_large`, or `over_quota`) has its header as its raw
    bytes: its text, HTML and attachments are unknown, so they stay empty.
    """
    parsed = dict(fields if fields is not None else parsed_fields(m.raw))
    if m.too_large or over_quota:
        parsed.update(_NO_BODY)
    flags = m.flags
    return {
        "tenant_id": f.tenant_id,
        "account_id": f.account_id,
        "folder_id": f.id,
        "uidvalidity": validity,
        "uid": m.uid,
        "modseq": m.modseq,
        "seen": flags.seen,
        "flagged": flags.flagged,
        "answered": flags.answered,
        "draft": flags.draft,
        "keywords": list(flags.keywords),
        "internal_date": m.internal_date,
        "size": m.size,
        "raw_id": raw_id,
        **parsed,
        "date": parsed["date"] or m.internal_date,
        "too_large": m.too_large and not over_quota,
        "over_quota": over_quota,
    }
