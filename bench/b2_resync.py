"""B2: resync of a synced account: nothing changed, then 10 and 1000 changes, vs mbsync.

Both sides start from a complete sync of the same mailbox (untimed). Each repetition applies
the same changes once (half flag changes by another client, half new messages), then each side
syncs them, alternating which goes first. The no-op must fetch no message body: the IMAP
commands the project sends are recorded (imapclient's protocol log) and checked.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager

from bench.corpus import Generator
from bench.lab import Lab
from bench.load import append
from bench.mailboxes import synced_account
from bench.mbsync import Mbsync
from bench.report import Result
from bench.stats import Row, failed, summarize
from bench.wire import Wire, quoted

FOLDERS = ["INBOX", "Archive", "Sent", "Drafts", "Trash", "Junk"] + [
    f"Projects/P{i:02d}" for i in range(14)
]
SIZES = {
    True: {"messages": 5000, "reps": 3, "changes": (10, 1000)},
    False: {"messages": 100_000, "reps": 5, "changes": (10, 1000)},
}


class _Sent(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("> "):
            self.lines.append(text)


@contextmanager
def commands_sent():
    """The IMAP commands this process sends meanwhile (imapclient logs them at DEBUG)."""
    logger = logging.getLogger("imapclient.imaplib")
    handler, previous = _Sent(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


class Changer:
    """Changes the mailbox from outside, as another mail client would."""

    def __init__(self, lab: Lab, email: str, password: str, counts: dict[str, int]) -> None:
        self.lab, self.email, self.password = lab, email, password
        self.counts = dict(counts)  # messages per folder (UIDs 1..n after MULTIAPPEND)
        self.rnd = random.Random(42)
        self.generator = Generator(seed=2)
        self.next_index = 0
        self.flip = False

    def apply(self, changes: int) -> int:
        """`changes` changes: half flag changes, half new messages; return how many are new."""
        new = changes - changes // 2
        wire = Wire(self.lab.info.host, self.lab.info.imap_port)
        wire.login(self.email, self.password)
        try:
            by_folder: dict[str, set[int]] = {}
            folders = list(self.counts)
            while sum(len(u) for u in by_folder.values()) < changes // 2:
                folder = self.rnd.choice(folders)
                by_folder.setdefault(folder, set()).add(self.rnd.randint(1, self.counts[folder]))
            self.flip = not self.flip
            sign = "+" if self.flip else "-"
            for folder, uids in by_folder.items():
                wire.command(f"SELECT {quoted(folder)}")
                uid_set = ",".join(str(u) for u in sorted(uids))
                wire.command(f"UID STORE {uid_set} {sign}FLAGS.SILENT (\\Flagged \\Seen)")
            items = [
                (self.next_index + i, self.generator.message(self.next_index + i))
                for i in range(new)
            ]
            self.next_index += new
            append(wire, "INBOX", items)
            self.counts["INBOX"] += new
        finally:
            wire.close()
        return new


def folder_counts(lab: Lab, email: str, password: str, folders: list[str]) -> dict[str, int]:
    wire = Wire(lab.info.host, lab.info.imap_port)
    wire.login(email, password)
    counts = {}
    for folder in folders:
        response, _ = wire.command(f"STATUS {quoted(folder)} (MESSAGES)")
        counts[folder] = int(response.rsplit(b"MESSAGES ", 1)[1].split(b")")[0])
    wire.close()
    return counts


def run(lab: Lab, quick: bool) -> Result:
    size = SIZES[quick]
    n = size["messages"]
    _tenant, account_id, box = synced_account(lab, "b2", FOLDERS, n)
    mbsync = Mbsync(
        lab.work / "b2-mbsync", lab.info.host, lab.info.imap_port, box.email, box.password
    )
    mbsync.reset()
    mbsync.run()
    if mbsync.count() != n:
        raise RuntimeError(f"mbsync's initial sync stored {mbsync.count()} of {n}")
    syncer = lab.syncer()
    changer = Changer(
        lab, box.email, box.password, folder_counts(lab, box.email, box.password, FOLDERS)
    )

    rows: list[Row] = []
    bodies: list[float] = []
    commands: list[float] = []  # IMAP commands sent by each no-op
    for changes in (0, *size["changes"]):
        project, peer = [], []
        for rep in range(size["reps"]):
            new = changer.apply(changes) if changes else 0

            def side_project(new=new, changes=changes, project=project) -> None:
                with commands_sent() as sent:
                    began = time.perf_counter()
                    outcome = syncer.sync_account(account_id)
                    elapsed = time.perf_counter() - began
                if outcome.messages_fetched != new:
                    raise RuntimeError(f"fetched {outcome.messages_fetched}, expected {new}")
                if not changes:
                    bodies.append(
                        sum(1 for line in sent if "BODY.PEEK[" in line or "BODY[" in line)
                    )
                    commands.append(len(sent))
                project.append(elapsed * 1000)

            def side_mbsync(peer=peer) -> None:
                peer.append(mbsync.run() * 1000)

            for side in (
                (side_project, side_mbsync) if rep % 2 == 0 else (side_mbsync, side_project)
            ):
                side()
        label = "no-op resync" if not changes else f"resync, {changes} changes"
        rows.append(
            Row(
                "B2", label, "ms", summarize(project), "mbsync", summarize(peer),
                goal=("<=", 1.0) if not changes else ("<=", 2.0) if changes >= 1000 else None,
            )
        )  # fmt: skip
        if not changes:
            # Whatever the mailbox's size: 30 ms plus 1 ms a folder.
            rows.append(
                Row(
                    "B2", "no-op resync, absolute", "ms", summarize(project),
                    goal=("<=", 30 + len(FOLDERS)), goal_on="value",
                )
            )  # fmt: skip
    if lab.profiling:
        from bench.profiling import profile_call

        profile_call("B2-noop-resync", lambda: syncer.sync_account(account_id))
        changer.apply(1000)
        profile_call("B2-1000-changes", lambda: syncer.sync_account(account_id))
    if any(bodies):
        rows.append(failed("B2", "no-op fetched no body", f"bodies fetched: {bodies}"))
    else:
        rows.append(
            Row(
                "B2", "bodies fetched in a no-op", "FETCH", summarize(bodies),
                goal=("<=", 0), goal_on="value",
            )
        )  # fmt: skip
    rows.append(Row("B2", "IMAP commands sent in a no-op", "commands", summarize(commands)))
    notes = [
        "changes: half `\\Flagged \\Seen` set/cleared on random messages across folders, half new "
        "messages appended to INBOX; each side syncs the same changes once.",
        "mbsync 1.4 has no CONDSTORE: its no-op reads every folder's UIDs and flags; the project "
        "asks every folder's STATUS in its LIST (LIST-STATUS, RFC 5819) and opens none that is "
        "unchanged (the commands it sends in a no-op are counted: LOGIN, CAPABILITY, ENABLE, "
        "LIST, LOGOUT).",
        "project: Syncer.sync_account in a warm process (as an RQ worker runs it).",
    ]
    return Result("B2", rows, corpus=box.corpus, notes=notes)
