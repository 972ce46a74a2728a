"""Deliver a generated corpus into the stack's Dovecot with MULTIAPPEND (RFC 3502).

One APPEND command carries a whole batch of messages as non-synchronizing literals (RFC 7888
LITERAL+), so a batch costs one round trip: thousands of messages a second, against 10-40 ms
per message through LMTP. Dovecot indexes them as it would mail delivered to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.wire import ImapError, Wire, quoted

BATCH_BYTES = 8 * 1024 * 1024
BATCH_MESSAGES = 500


def flags_for(index: int) -> str:
    """A realistic flag mix: most mail read, a little flagged or answered."""
    flags = []
    if index % 10 < 7:
        flags.append("\\Seen")
    if index % 33 == 0:
        flags.append("\\Flagged")
    if index % 13 == 0:
        flags.append("\\Answered")
    return "(" + " ".join(flags) + ")"


def create_folders(wire: Wire, folders: Iterable[str]) -> None:
    for folder in folders:
        if folder.upper() == "INBOX":
            continue
        try:
            wire.command(f"CREATE {quoted(folder)}")
        except ImapError as exc:
            if "ALREADYEXISTS" not in str(exc) and "exists" not in str(exc).lower():
                raise


def append(wire: Wire, folder: str, messages: Iterable[tuple[int, bytes]]) -> int:
    """MULTIAPPEND `messages` ((index, bytes)) to `folder` in batches; return how many."""
    count = 0
    batch: list[tuple[int, bytes]] = []
    size = 0

    def flush() -> None:
        if not batch:
            return
        tag = wire.next_tag()
        parts = [tag, b" APPEND ", quoted(folder).encode()]
        for index, raw in batch:
            parts += [b" ", flags_for(index).encode(), b" {%d+}\r\n" % len(raw), raw]
        parts.append(b"\r\n")
        wire.send_raw(b"".join(parts))

    for index, raw in messages:
        batch.append((index, raw))
        size += len(raw)
        count += 1
        if size >= BATCH_BYTES or len(batch) >= BATCH_MESSAGES:
            flush()
            batch, size = [], 0
    flush()
    return count


def deliver(
    host: str, port: int, user: str, password: str, items: Iterable[tuple[str, int, bytes]]
) -> int:
    """Append (folder, index, bytes) items, grouped by runs of the same folder."""
    wire = Wire(host, port)
    wire.login(user, password)
    created: set[str] = set()
    total = 0
    try:
        run: list[tuple[int, bytes]] = []
        current = None
        for folder, index, raw in items:
            if folder != current:
                if run:
                    total += append(wire, current, run)
                run, current = [], folder
                if folder not in created:
                    create_folders(wire, [folder])
                    created.add(folder)
            run.append((index, raw))
            if len(run) >= BATCH_MESSAGES:
                total += append(wire, current, run)
                run = []
        if run:
            total += append(wire, current, run)
    finally:
        wire.close()
    return total
