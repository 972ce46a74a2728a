"""A seeded corpus of realistic mail: the same seed gives the same bytes on every machine.

The mix follows what a real mailbox holds: most messages are a few KiB (median about 8 KiB,
text/plain or multipart/alternative), about 5 % are 50-500 KiB (newsletters with images, office
attachments), and about 0.4 % are a few MB with attachments. A third of the senders and
subjects are non-ASCII (RFC 2047 encoded words). Attachments are random bytes, so they do not
compress away and base64 grows them by 4/3 as in real mail. Lines end in CRLF (RFC 5322), the
form IMAP APPEND and LMTP carry.
"""

from __future__ import annotations

import base64
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.header import Header
from email.utils import format_datetime
from urllib.parse import quote

KIB = 1024
MIB = 1024 * KIB

NAMES = [
    "Alice Martin", "Bob Stone", "Carol Diaz", "Dan Brooks", "Eve Nakamura", "Frank Olsen",
    "Grace Hopper", "Heidi Klum", "Ivan Petrov", "Judy Chen", "Mallory Quinn", "Oscar Wilde",
    "Jörg Müller", "Zoë Lefèvre", "François Dupré", "Søren Kierkegård", "Łukasz Wójcik",
    "Дмитрий Иванов", "Ελένη Παπαδοπούλου", "山田太郎", "김민준", "Ayşe Yılmaz", "José Peña",
]  # fmt: skip
DOMAINS = ["example.test", "corp.example", "lists.example.org", "mail.example.net", "büro.test"]
SUBJECTS_ASCII = [
    "Quarterly report", "Lunch on Thursday?", "Re: build failure on main", "Invoice {n}",
    "Meeting notes {n}", "Your order has shipped", "Weekly digest #{n}", "Fwd: contract draft",
    "Design review for the sync engine", "Holiday schedule", "Re: Re: budget {n}",
]  # fmt: skip
SUBJECTS_UTF8 = [
    "Grüße aus München", "Réunion de l'équipe — compte rendu", "Счёт №{n}", "会議のお知らせ",
    "Ελάτε στη γιορτή", "Café ☕ on Friday?", "Überweisung {n} erhalten", "Año nuevo 🎉",
]  # fmt: skip
# Words with a Zipf-like frequency, so that search sees common, medium and rare words.
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will more can who out about time up into only do could other than then now look "
    "report budget meeting sync server folder message invoice project review release deploy "
    "search index database mailbox attachment schedule contract customer support ticket "
    "quarter revenue forecast design engine latency throughput backup migration Straße "
    "naïve façade café résumé über Größe smörgåsbord zyzzyva quixotic"
).split()

# A long tail of made-up words after the common ones: real mail has a vocabulary of thousands,
# so that most words are rare and search sees selective terms too, not only ubiquitous ones.
SYLLABLES = "ka lo mi nu pe ri so ta ve zu bra cle dri fo gno".split()
WORDS += [
    a + b + c
    for a in SYLLABLES
    for b in SYLLABLES
    for c in ("", "n", "s", "tor", "ment", "ing", "al", "ic", "er", "ish", "ous", "ity")
]

HTML_HEAD = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title></head><body>"


@dataclass(frozen=True)
class Stats:
    """What a generated corpus holds, for the results table."""

    messages: int
    total_bytes: int
    median_bytes: int
    over_50k: int
    over_1m: int


class Generator:
    """Messages from one seed; `message(i)` is the same bytes for the same (seed, i)."""

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed
        weights = [1 / (rank + 1) for rank in range(len(WORDS))]
        total = sum(weights)
        self.cumulative = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.start = datetime(2023, 1, 1, tzinfo=timezone.utc)

    def message(self, index: int) -> bytes:
        rnd = random.Random(self.seed * 1_000_003 + index)
        kind = rnd.random()
        if kind < 0.004:
            target = int(math.exp(rnd.uniform(math.log(1 * MIB), math.log(5 * MIB))))
        elif kind < 0.054:
            target = int(math.exp(rnd.uniform(math.log(50 * KIB), math.log(500 * KIB))))
        else:
            target = int(min(max(rnd.lognormvariate(math.log(8.2 * KIB), 0.6), 1200), 48 * KIB))
        return self._build(rnd, index, target)

    def messages(self, count: int, start: int = 0) -> Iterator[bytes]:
        for i in range(start, start + count):
            yield self.message(i)

    def _words(self, rnd: random.Random, nbytes: int) -> str:
        out, size, line = [], 0, 0
        picks = rnd.choices(WORDS, cum_weights=self.cumulative, k=max(8, nbytes // 5))
        for word in picks:
            out.append(word)
            size += len(word) + 1
            line += len(word) + 1
            if line > 70:
                out.append("\n")
                line = 0
            if size >= nbytes:
                break
        return " ".join(out).replace(" \n ", "\n")

    def _address(self, rnd: random.Random) -> str:
        name = rnd.choice(NAMES)
        local = "".join(c for c in name.lower().split()[0] if c.isascii() and c.isalpha())
        email = f"{local or 'user'}{rnd.randrange(100)}@{rnd.choice(DOMAINS[:4])}"
        return f"{_encoded(name)} <{email}>"

    def _build(self, rnd: random.Random, index: int, target: int) -> bytes:
        """The MIME text written directly: the stdlib's header folding costs 4 ms a message."""
        subjects = SUBJECTS_UTF8 if rnd.random() < 0.33 else SUBJECTS_ASCII
        subject = rnd.choice(subjects).format(n=rnd.randrange(10_000))
        when = self.start + timedelta(minutes=index * 7 + rnd.randrange(7))
        tos = [self._address(rnd) for _ in range(rnd.choice((1, 1, 1, 2, 3)))]
        head = [
            f"From: {self._address(rnd)}",
            "To: " + ",\r\n ".join(tos),
        ]
        if rnd.random() < 0.2:
            head.append(f"Cc: {self._address(rnd)}")
        head += [
            f"Subject: {_encoded(subject)}",
            f"Date: {format_datetime(when)}",
            f"Message-ID: <{self.seed}.{index}.{rnd.getrandbits(40):x}@bench.example>",
        ]
        if rnd.random() < 0.3:
            head.append(f"In-Reply-To: <{self.seed}.{rnd.randrange(index + 1)}@bench.example>")
        head += ["X-Mailer: bench-corpus/1", "MIME-Version: 1.0"]

        attach = target - 6 * KIB if target > 48 * KIB else 0
        text_budget = max(target - attach - 700, 300)  # headers and MIME boundaries
        alternative = rnd.random() < 0.6
        text = self._words(rnd, int(text_budget * 0.4) if alternative else text_budget)
        body = _part("text/plain; charset=utf-8", "8bit", text.replace("\n", "\r\n") + "\r\n")
        if alternative:
            paragraphs = "".join(f"<p>{p}</p>\r\n" for p in text.split("\n") if p)
            html = HTML_HEAD.format(t=subject) + paragraphs + "</body></html>\r\n"
            html_part = _part("text/html; charset=utf-8", "8bit", html)
            body = _multipart("alternative", f"alt{self.seed}x{index}", [body, html_part])
        if attach:
            # base64 grows bytes by 4/3: aim at the target size on the wire.
            data = base64.encodebytes(rnd.randbytes(int(attach * 3 / 4)))
            maintype, ext = rnd.choice(
                [("application/pdf", "pdf"), ("image/jpeg", "jpg"), ("application/zip", "zip")]
            )
            name = rnd.choice(["report", "Präsentation", "scan", "photo", "données"])
            disposition = f"attachment; {_filename(f'{name}.{ext}')}"
            part = (
                f"Content-Type: {maintype}\r\nContent-Disposition: {disposition}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n" + data.decode().replace("\n", "\r\n")
            )
            body = _multipart("mixed", f"mix{self.seed}x{index}", [body, part])
        return ("\r\n".join(head) + "\r\n" + body).encode()


def _encoded(text: str) -> str:
    """A header value as RFC 2047 encoded words when it is not ASCII."""
    return text if text.isascii() else Header(text, "utf-8").encode()


def _filename(name: str) -> str:
    """RFC 2231 for non-ASCII file names."""
    return f'filename="{name}"' if name.isascii() else f"filename*=utf-8''{quote(name)}"


def _part(content_type: str, encoding: str, payload: str) -> str:
    return (
        f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n" + payload
    )


def _multipart(subtype: str, boundary: str, parts: list[str]) -> str:
    inner = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n{inner}--{boundary}--\r\n'
    )


def stats(sizes: list[int]) -> Stats:
    ordered = sorted(sizes)
    return Stats(
        messages=len(sizes),
        total_bytes=sum(sizes),
        median_bytes=ordered[len(ordered) // 2] if ordered else 0,
        over_50k=sum(1 for s in sizes if s >= 50 * KIB),
        over_1m=sum(1 for s in sizes if s >= MIB),
    )


def spread(count: int, folders: list[str]) -> list[str]:
    """Which folder each message goes to: the first folders get more (INBOX-heavy, as in life)."""
    weights = [1 / (i + 1) for i in range(len(folders))]
    rnd = random.Random(len(folders) * 7919 + count)
    return rnd.choices(folders, weights=weights, k=count)
