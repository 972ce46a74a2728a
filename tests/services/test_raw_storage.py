"""How raw messages are stored: compressed with lz4 (migration 0007), byte for byte; and the
parsed text beside them (migration 0010)."""

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


def test_a_long_messages_text_is_stored_lz4_compressed(mailbox, account_id, make_syncer, db):
    """Migration 0010: the parsed text, HTML and headers of a message are TOASTed with lz4."""
    body = "".join(f"line {n} of a long message, with words that repeat\n" for n in range(3000))
    html = "<p>" + "</p><p>".join(f"paragraph {n}, repeated" for n in range(3000)) + "</p>"
    mailbox.append("INBOX", message(subject="long text", body=body, html=html))
    make_syncer().sync_account(account_id)
    text_c, html_c, text_body = db.execute(
        text(
            "SELECT pg_column_compression(text_body), pg_column_compression(html_body), "
            "text_body FROM messages WHERE account_id = :a AND subject = 'long text'"
        ),
        {"a": account_id},
    ).one()
    assert (text_c, html_c) == ("lz4", "lz4")
    assert text_body == body
