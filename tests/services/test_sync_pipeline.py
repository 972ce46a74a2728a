"""The sync's parse pool against the stack's real Dovecot: what it parses is stored exactly as
a parse in the sync's own process would store it, a parse process that dies costs no message,
and the pool's processes never outlive the process that started them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from sqlalchemy import select

from app.models import MessageRaw
from app.services.sync import parsing
from app.services.sync.rows import parsed_fields
from tests.mailbox import message, stored
from tests.services.test_sync import build_mailbox

FIELDS = [
    "subject", "from_name", "from_email", "to_addrs", "cc_addrs", "bcc_addrs", "recipients",
    "reply_to", "message_id_header", "in_reply_to", "references", "headers", "text_body",
    "html_body", "attachments", "has_attachments", "parse_error",
]  # fmt: skip


def _fill(mailbox) -> None:
    build_mailbox(mailbox)  # plain, HTML, attachment, RFC 2047, a wrong charset, broken MIME
    for n in range(12):
        mailbox.append(
            "INBOX",
            message(
                subject=f"Grüße {n}",
                body=f"Zeile {n}\n" * 50,
                html=f"<p>n° {n}</p>" if n % 2 else None,
                attachments=[("data.bin", "application/octet-stream", os.urandom(3000))],
                cc="Carbon <cc@example.test>",
            ),
        )


def _check_against_a_parse_in_place(db_sessionmaker, account_id: int) -> int:
    """Every stored copy's parsed columns equal `parsed_fields` of its raw bytes, parsed
    here; how many copies were compared."""
    compared = 0
    with db_sessionmaker() as s:
        for folder in stored(db_sessionmaker, account_id).values():
            for m in folder.values():
                raw = s.scalar(select(MessageRaw.data).where(MessageRaw.id == m.raw_id))
                expected = parsed_fields(raw)
                assert {k: getattr(m, k) for k in FIELDS} == {k: expected[k] for k in FIELDS}
                assert m.date == (expected["date"] or m.internal_date)
                compared += 1
    return compared


def test_rows_parsed_in_the_pool_equal_a_parse_in_the_syncs_process(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    _fill(mailbox)
    assert make_syncer(batch_messages=8).sync_account(account_id).complete
    executor = parsing.pool()
    assert executor is not None  # the tests run on two cores or more, as the service does
    assert parsing.pool() is executor  # one pool per process, kept between syncs
    assert _check_against_a_parse_in_place(db_sessionmaker, account_id) == 20


def test_a_parse_process_that_dies_costs_no_message(
    mailbox, account_id, make_syncer, db_sessionmaker
):
    _fill(mailbox)
    executor = parsing.pool()
    assert executor is not None
    assert executor.submit(parsed_fields, b"Subject: warm\r\n\r\nup\r\n").result()["subject"]
    for process in list(executor._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
    assert make_syncer(batch_messages=8).sync_account(account_id).complete
    # The broken pool was replaced for the batches after it, and nothing was lost.
    assert parsing.pool() is not executor
    assert _check_against_a_parse_in_place(db_sessionmaker, account_id) == 20


def _start_a_pool_and_vanish(pids_file: str) -> None:
    executor = parsing.pool()
    assert executor is not None
    executor.submit(parsed_fields, b"Subject: x\r\n\r\ny\r\n").result()
    Path(pids_file).write_text(" ".join(str(pid) for pid in executor._processes))
    os._exit(0)  # as an RQ work-horse ends: no atexit, no shutdown of the pool


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_the_pools_processes_end_with_the_process_that_started_them(tmp_path):
    pids_file = tmp_path / "pids"
    horse = multiprocessing.get_context("fork").Process(
        target=_start_a_pool_and_vanish, args=(str(pids_file),)
    )
    horse.start()
    horse.join(30)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == parsing.workers() >= 2
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)
