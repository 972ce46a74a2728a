"""How raw messages are stored: compressed with lz4 (migration 0007), byte for byte."""

from __future__ import annotations

from sqlalchemy import text

from tests.mailbox import message


def test_raw_messages_are_stored_lz4_compressed_and_intact(mailbox, account_id, make_syncer, db):
    raw = message(subject="big", body="the same line, again and again\n" * 4000)
    mailbox.append("INBOX", raw)
    make_syncer().sync_account(account_id)
    compression, data = db.execute(
        text(
            "SELECT pg_column_compression(r.data), r.data FROM message_raws r "
            "JOIN messages m ON m.raw_id = r.id WHERE m.account_id = :a AND m.subject = 'big'"
        ),
        {"a": account_id},
    ).one()
    assert compression == "lz4"
    # IMAP sends lines with CRLF; otherwise the stored bytes are the appended ones.
    assert bytes(data) == raw.replace(b"\n", b"\r\n")
