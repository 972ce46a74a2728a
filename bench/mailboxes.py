"""Mailboxes filled with the generated corpus, and the synced accounts benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass

from bench.corpus import Generator, spread, stats
from bench.lab import Lab
from bench.load import deliver


@dataclass
class Filled:
    """A Dovecot mailbox holding `messages` generated messages over `folders`."""

    email: str
    password: str
    folders: list[str]
    messages: int
    corpus: dict


def filled(lab: Lab, prefix: str, folders: list[str], messages: int, seed: int = 1) -> Filled:
    """A new mailbox with the corpus delivered by MULTIAPPEND (cached per run and shape)."""

    def make() -> Filled:
        (email, password), = lab.mailboxes(prefix, 1).items()  # fmt: skip
        generator = Generator(seed)
        where = spread(messages, folders)
        sizes: list[int] = []

        def items():
            for folder in folders:
                for index in range(messages):
                    if where[index] == folder:
                        raw = generator.message(index)
                        sizes.append(len(raw))
                        yield folder, index, raw

        delivered = deliver(lab.info.host, lab.info.imap_port, email, password, items())
        assert delivered == messages, (delivered, messages)
        s = stats(sizes)
        corpus = {
            "messages": s.messages,
            "folders": len(folders),
            "total_MiB": round(s.total_bytes / 2**20, 1),
            "median_KiB": round(s.median_bytes / 1024, 1),
            ">=50KiB": s.over_50k,
            ">=1MiB": s.over_1m,
            "seed": seed,
        }
        return Filled(email, password, folders, messages, corpus)

    return lab.cached(("filled", prefix, tuple(folders), messages, seed), make)


def synced_account(lab: Lab, prefix: str, folders: list[str], messages: int):
    """(tenant, account id, mailbox) for a mailbox synced once by the project."""

    def make():
        box = filled(lab, prefix, folders, messages)
        tenant = lab.tenant(prefix)
        account_id = lab.account(tenant.id, box.email, box.password)
        outcome = lab.syncer().sync_account(account_id)
        assert outcome.complete and outcome.messages_fetched == messages, outcome
        return tenant, account_id, box

    return lab.cached(("synced", prefix, tuple(folders), messages), make)
