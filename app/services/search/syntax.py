"""The search query language: web-search syntax plus field filters, parsed into terms.

Grammar (docs/api.md, GET /api/sync/search; `grammar.QUERY_PATTERN` is the same language as a
regular expression, published in the OpenAPI document):
  query   := group*                      groups are ANDed; an empty query lists all mail
  group   := term ("OR" term)*           OR (upper-case, a word of its own) binds tighter than
                                         the implicit AND: `a b OR c` is a AND (b OR c)
  term    := ["-"] (word | "phrase" | filter)      "-" negates any term
  filter  := name ":" (value | "quoted value")     names in any case
Filters: from: to: subject: has:attachment is:unread is:flagged in:FOLDER after:YYYY-MM-DD
before:YYYY-MM-DD account:ID. Terms are separated by ASCII white space (or a quote). A word
with no letter or digit (`&`, `--`) has nothing to search for and is ignored, though it still
counts as a term next to OR (`a OR &` is `a`). No parentheses: they are part of words.

Anything malformed is a QuerySyntaxError naming the problem, never a guess: an unbalanced
quote, an unknown filter (`re:`: quote it, `"re: lunch"`, to search it as words), a filter
without a value, a bad date or account id, OR without a term on each side, NUL, more than
MAX_QUERY_CHARS characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from app.errors import ValidationFailed

MAX_QUERY_CHARS = 1000
SEPARATORS = " \t\n\r\f\v"  # not str.isspace(): JSON Schema's \s differs from Python's
FILTERS = ("from", "to", "subject", "has", "is", "in", "after", "before", "account")
IS_VALUES = ("unread", "flagged")
HAS_VALUES = ("attachment",)

# Letters or digits: what PostgreSQL's parser can turn into a lexeme.
_SEARCHABLE = re.compile(r"[^\W_]")
_FILTER_NAME = re.compile(r"([A-Za-z]+):")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ACCOUNT = re.compile(r"[0-9]{1,18}")


class QuerySyntaxError(ValidationFailed):
    """The query does not follow the syntax; the message says where and why."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"Invalid query: {problem}", [{"field": "query", "message": problem}])


@dataclass(frozen=True)
class Text:
    """Words to find anywhere (subject, addresses, body); a phrase keeps their order."""

    value: str
    phrase: bool = False


@dataclass(frozen=True)
class Filter:
    """`name:value`, the value as typed (validated and typed by `parse`)."""

    name: str
    value: str | int | date


@dataclass(frozen=True)
class Term:
    atom: Text | Filter
    negated: bool = False


@dataclass
class Query:
    """Groups ANDed together; the terms of a group ORed."""

    groups: list[list[Term]] = field(default_factory=list)

    def terms(self) -> list[Term]:
        return [term for group in self.groups for term in group]

    def highlights(self) -> list[str]:
        """The words a snippet marks: every word of a positive text or subject: term."""
        words: list[str] = []
        for term in self.terms():
            if term.negated:
                continue
            if isinstance(term.atom, Text):
                words.append(term.atom.value)
            elif term.atom.name == "subject":
                words.append(str(term.atom.value))
        return words


def parse(text: str) -> Query:
    """`text` as a Query; QuerySyntaxError when it is malformed."""
    if len(text) > MAX_QUERY_CHARS:
        raise QuerySyntaxError(f"it is longer than {MAX_QUERY_CHARS} characters.")
    if "\x00" in text:
        raise QuerySyntaxError("it contains a NUL character.")
    groups: list[list[Term | None]] = []
    pending_or = False
    for token in _tokens(text):
        if token == "OR":
            if not groups or pending_or:
                raise QuerySyntaxError("OR needs a term on each side.")
            pending_or = True
        elif pending_or:
            groups[-1].append(token)
            pending_or = False
        else:
            groups.append([token])
    if pending_or:
        raise QuerySyntaxError("OR needs a term on each side.")
    # Terms with nothing to search for (None) are ignored, in an OR group too.
    kept = [[term for term in group if term is not None] for group in groups]
    return Query([group for group in kept if group])


def _tokens(text: str) -> Iterator[Term | Literal["OR"] | None]:
    """Terms, the string "OR", or None for a word or phrase with nothing searchable in it."""
    i, n = 0, len(text)
    while i < n:
        if text[i] in SEPARATORS:
            i += 1
            continue
        negated = False
        if text[i] == "-" and i + 1 < n and text[i + 1] not in SEPARATORS:
            negated = True
            i += 1
        if text[i] == '"':
            value, i = _quoted(text, i)
            yield Term(Text(value, phrase=True), negated) if _SEARCHABLE.search(value) else None
            continue
        name = _FILTER_NAME.match(text, i)
        if name:
            i = name.end()
            if i < n and text[i] == '"':
                value, i = _quoted(text, i)
            else:
                value, i = _word(text, i)
            yield Term(_filter(name.group(1).lower(), value), negated)
            continue
        value, i = _word(text, i)
        if value == "OR" and not negated:
            yield "OR"
        elif _SEARCHABLE.search(value):
            yield Term(Text(value), negated)
        else:
            yield None


def _quoted(text: str, start: int) -> tuple[str, int]:
    end = text.find('"', start + 1)
    if end < 0:
        raise QuerySyntaxError(f"the quote at position {start + 1} is never closed.")
    return text[start + 1 : end], end + 1


def _word(text: str, start: int) -> tuple[str, int]:
    i = start
    while i < len(text) and text[i] not in SEPARATORS and text[i] != '"':
        i += 1
    return text[start:i], i


def _filter(name: str, value: str) -> Filter:
    if name not in FILTERS:
        known = ", ".join(f"{f}:" for f in FILTERS)
        raise QuerySyntaxError(
            f"unknown filter '{name}:' (known: {known}; quote it to search it as words)."
        )
    if not value:
        raise QuerySyntaxError(f"{name}: needs a value.")
    if name in ("after", "before"):
        return Filter(name, _date(name, value))
    if name == "account":
        if not _ACCOUNT.fullmatch(value):
            raise QuerySyntaxError(f"account: takes an account id (a number), not '{value}'.")
        return Filter(name, int(value))
    if name == "is" and value.lower() not in IS_VALUES:
        raise QuerySyntaxError(f"is: takes {' or '.join(IS_VALUES)}, not '{value}'.")
    if name == "has" and value.lower() not in HAS_VALUES:
        raise QuerySyntaxError(f"has: takes {' or '.join(HAS_VALUES)}, not '{value}'.")
    if name in ("is", "has"):
        return Filter(name, value.lower())
    return Filter(name, value)


def _date(name: str, value: str) -> date:
    problem = f"{name}: takes a date as YYYY-MM-DD, not '{value}'."
    if not _DATE.fullmatch(value):
        raise QuerySyntaxError(problem)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise QuerySyntaxError(problem) from None
