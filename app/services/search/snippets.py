"""Snippets: a short excerpt of a hit, HTML-escaped, with the query's words in <mark>.

Built in Python for the returned page only, from bounded text (the first BODY_HEAD_CHARS of
the body, and the subject), so a 5 MB message costs no more than a short one. Words compare
the way the `mail_search` configuration compares them (lower case, accents folded as
`unaccent` folds them), so "naive" marks "naïve" and "münchen" marks "MÜNCHEN".
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Iterator

SNIPPET_CHARS = 200
LEAD_CHARS = 60  # context kept before the first match
_WORD = re.compile(r"[^\W_]+")
_NON_ASCII_LETTER = re.compile(r"[^\W_\x00-\x7f]")
# Letters unaccent folds that Unicode decomposition leaves alone.
_FOLD = str.maketrans(
    {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "þ": "th", "ð": "d"}
)
_FOLDED_LETTER = re.compile("[ßæœøłđþð]")
_NOTHING = re.compile("(?!)")  # matches nowhere: the patterns of a query without words


def fold(word: str) -> str:
    """`word` as search compares it: lower case, accents removed."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.translate(_FOLD)


class Highlighter:
    """Snippets for one query's words; built once per page, used for each hit."""

    def __init__(self, words: list[str]) -> None:
        self.terms = {fold(w) for phrase in words for w in _WORD.findall(phrase)}
        # Longest first, so "mail" does not stop a match of "mailbox".
        alternatives = "|".join(re.escape(t) for t in sorted(self.terms, key=len, reverse=True))
        self._exact = re.compile(alternatives) if self.terms else _NOTHING
        self._exact_any_case = re.compile(alternatives, re.IGNORECASE) if self.terms else _NOTHING

    def snippet(self, body: str | None, subject: str | None) -> str:
        """Around the first match in the body, else the subject if it matches, else the start."""
        text = " ".join((body or "").split())
        first = self._first(text)
        if first is None and subject:
            subject = " ".join(subject.split())[:SNIPPET_CHARS]
            if self._spans(subject):
                return self._marked(subject)
        first = first or 0
        start = 0
        if first > LEAD_CHARS:
            start = first - LEAD_CHARS
            space = text.find(" ", start, first)
            start = space + 1 if space >= 0 else start  # on a word boundary when there is one
        end = start + SNIPPET_CHARS
        if end < len(text):
            space = text.rfind(" ", max(start, first) + 1, end)
            end = space if space > 0 else end
        prefix = "… " if start > 0 else ""
        suffix = " …" if end < len(text) else ""
        return f"{prefix}{self._marked(text[start:end])}{suffix}"

    def _first(self, text: str) -> int | None:
        """Where the first matching word of `text` starts (None: nowhere).

        Scans in C where it can, as `text` may be 20 KB: the terms as typed, in any case;
        then, only when the folded text holds a term at all, the words with a non-ASCII
        letter before that point, which may fold to a term ("naïve").
        """
        if not self.terms:
            return None
        first = next(iter(self._exact_spans(text)), (None,))[0]
        if not text.isascii() and self._exact.search(_fold_text(text)):
            folded = next(iter(self._folded_spans(text, stop=first)), (None,))[0]
            if folded is not None and (first is None or folded < first):
                first = folded
        return first

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each word of `text` that is one of the terms, in order."""
        if not self.terms:
            return []
        spans = set(self._exact_spans(text))
        if not text.isascii():
            spans |= set(self._folded_spans(text))
        return sorted(spans)

    def _exact_spans(self, text: str) -> Iterator[tuple[int, int]]:
        lowered = text.lower()
        # lower() keeps positions unless a letter lower-cases to two ("İ"): then ask re.
        if len(lowered) == len(text):
            matches = self._exact.finditer(lowered)
        else:
            matches = self._exact_any_case.finditer(text)
        return (m.span() for m in matches if _whole_word(text, *m.span()))

    def _folded_spans(self, text: str, stop: int | None = None) -> Iterator[tuple[int, int]]:
        position = 0
        while letter := _NON_ASCII_LETTER.search(
            text, position, len(text) if stop is None else stop
        ):
            start = letter.start()
            while start > 0 and _is_word_char(text[start - 1]):
                start -= 1
            word = _WORD.match(text, start)
            assert word is not None  # text[start] is a letter or a digit
            end = word.end()
            if fold(text[start:end]) in self.terms:
                yield start, end
            position = end

    def _marked(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for start, end in self._spans(text):
            out.append(html.escape(text[last:start]))
            out.append(f"<mark>{html.escape(text[start:end])}</mark>")
            last = end
        out.append(html.escape(text[last:]))
        return "".join(out)


@functools.cache
def _combining_marks() -> re.Pattern[str]:
    """A character class of every combining mark of the BMP (computed once, on first use)."""
    marks = [c for c in range(0x10000) if unicodedata.combining(chr(c))]
    ranges, start = [], marks[0]
    for previous, current in zip(marks, [*marks[1:], -1], strict=True):
        if current != previous + 1:  # a run ends
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(previous))}")
            start = current
    return re.compile(f"[{''.join(ranges)}]+")


def _fold_text(text: str) -> str:
    """fold() for a whole text at C speed (positions move: only for "is a term in there")."""
    bare = _combining_marks().sub("", unicodedata.normalize("NFKD", text.lower()))
    return _FOLDED_LETTER.sub(lambda m: _FOLD[ord(m.group())], bare)


def _is_word_char(char: str) -> bool:
    return char.isalnum()


def _whole_word(text: str, start: int, end: int) -> bool:
    return (start == 0 or not _is_word_char(text[start - 1])) and (
        end == len(text) or not _is_word_char(text[end])
    )
