"""A parsed query as SQL: conditions on messages, and the two page statements.

The query text never becomes SQL: every word and value is a bound parameter. Words become
tsqueries through plainto_tsquery / phraseto_tsquery (which read no operators, so `& | ! <->`
typed by a user are just punctuation) and are combined with tsquery_and / tsquery_or /
tsquery_not (the functions behind && || !!) in SQL. from:/to: values are LIKE patterns with
% _ and \\ escaped.

Plans (EXPLAIN on 200k+ messages, asserted by tests/services/test_search_plans.py):
- The statements read `messages` alone, never joined to folders: PostgreSQL cannot estimate
  a join on (folder_id, uidvalidity) (it multiplies two selectivities that are really one),
  underestimates the rows by the number of folders, and then sorts thousands of matches of a
  medium word (200 ms seen) instead of walking the date index. "Current copy" is therefore
  decided per folder beforehand (`FolderInfo.mixed`), and only folders that really hold
  stale copies (mid-reload after a UIDVALIDITY change: rare and brief) add a condition.
- Newest first: ORDER BY date DESC, id DESC with the keyset as a row comparison, matching
  ix_messages_tenant_date (or ix_messages_folder_date for one folder); a common word walks the
  index and stops after a page, a rare word is a Bitmap Index Scan of ix_messages_search plus
  a top-N sort of its few hits: the planner picks by the word's frequency, which it knows
  because search runs with plan_cache_mode = force_custom_plan (a generic plan would not
  see the words).
- Relevance: the RELEVANCE_CANDIDATES newest matches (the plan above, bounded), ranked with
  ts_rank_cd; never a rank over every match of a common word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Float,
    ScalarSelect,
    Select,
    SQLColumnExpression,
    and_,
    case,
    cast,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import TSQUERY, TSVECTOR
from sqlalchemy.orm import Session, load_only

from app.models import Folder, Message
from app.models.sync import SEARCH_CONFIG
from app.services.messages import SUMMARY_COLUMNS, date_keyset
from app.services.search.syntax import Filter, Query, Term, Text
from app.states import FolderRole

RELEVANCE_CANDIDATES = 1000
BODY_HEAD_CHARS = 20_000  # what a snippet is cut from
# ts_rank_cd normalization 1: divide by 1 + log(length), so a long newsletter repeating a
# word does not outrank a short message about it.
RANK_NORMALIZATION = 1

# A constant, not a parameter: the configuration is ours, never the session's default.
_CONFIG: ColumnClause[str] = literal_column(f"'{SEARCH_CONFIG}'::regconfig")
_ROLES = frozenset(FolderRole)


@dataclass(frozen=True)
class FolderInfo:
    id: int
    name: str
    role: str | None
    uidvalidity: int | None
    mixed: bool  # holds copies of another UIDVALIDITY than the current one


def load_folders(session: Session) -> dict[int, FolderInfo]:
    """The tenant's folders, each with whether it holds stale copies right now."""
    # The lowest and highest UIDVALIDITY among a folder's copies: each one probe of the
    # (folder_id, uidvalidity, uid) unique index, however many copies the folder holds. (EXISTS
    # of a copy above or below the folder's UIDVALIDITY read like two probes, but the planner
    # answered them with a scan of the tenant's messages per folder whenever none exists, the
    # usual case: most of a search's time on a small mailbox, BENCHMARKS.md B3.)
    lowest = _uidvalidity_bound(func.min)
    highest = _uidvalidity_bound(func.max)
    mixed = case(
        (Folder.uidvalidity.is_(None), lowest.is_not(None)),
        else_=or_(lowest < Folder.uidvalidity, highest > Folder.uidvalidity),
    )
    rows = session.execute(
        select(Folder.id, Folder.name, Folder.role, Folder.uidvalidity, mixed.label("mixed"))
    )
    return {row.id: FolderInfo(*row) for row in rows}


def _uidvalidity_bound(bound: Any) -> ScalarSelect[int]:
    query = select(bound(Message.uidvalidity)).where(Message.folder_id == Folder.id)
    return query.correlate(Folder).scalar_subquery()


def folder_ids(folders: dict[int, FolderInfo], value: str) -> list[int]:
    """Folders `in:value` names: by full name (INBOX in any case) or by role."""
    role = value.lower()
    return sorted(
        f.id
        for f in folders.values()
        if f.name == value
        or (value.upper() == "INBOX" and f.name == "INBOX")
        or (role in _ROLES and f.role == role)
    )


@dataclass(frozen=True)
class Conditions:
    where: list[ColumnElement[bool]]
    rank_query: ColumnElement[str] | None  # the tsquery ts_rank_cd ranks by; None: no words


def conditions(query: Query, folders: dict[int, FolderInfo]) -> Conditions:
    """WHERE clauses for `query`: one tsquery for the word-only groups, the rest as booleans."""
    where: list[ColumnElement[bool]] = []
    word_groups: list[ColumnElement[str]] = []
    loose_words: list[ColumnElement[str]] = []  # positive words in groups mixed with filters
    for group in query.groups:
        texts = [(term.atom, term.negated) for term in group if isinstance(term.atom, Text)]
        if len(texts) == len(group):
            word_groups.append(_combine(func.tsquery_or, [_text_query(*t) for t in texts]))
        else:
            where.append(or_(*(_condition(term, folders) for term in group)))
            loose_words += [
                _tsquery(t.atom) for t in group if isinstance(t.atom, Text) and not t.negated
            ]
    words = _combine(func.tsquery_and, word_groups) if word_groups else None
    if words is not None:
        where.insert(0, _matches(words))
    # Only current copies: exclude the stale ones of the few folders that have any.
    where += [
        not_(and_(Message.folder_id == f.id, Message.uidvalidity.is_distinct_from(f.uidvalidity)))
        for f in folders.values()
        if f.mixed
    ]
    rank_query: ColumnElement[str] | None
    if words is not None:
        rank_query = words
    else:
        rank_query = _combine(func.tsquery_or, loose_words) if loose_words else None
    return Conditions(where, rank_query)


def by_date(
    cond: Conditions, after: tuple[datetime | None, int] | None, limit: int
) -> Select[Message, str | None]:
    """Newest first (date, then id), `limit` rows after the keyset position `after`."""
    where = list(cond.where)
    if after is not None:
        where.append(date_keyset(*after))
    return (
        select(Message, _body_head())
        .options(load_only(*SUMMARY_COLUMNS))
        .where(*where)
        .order_by(Message.date.desc(), Message.id.desc())
        .limit(limit)
    )


def by_relevance(
    cond: Conditions, after: tuple[float, int] | None, ceiling: int | None, limit: int
) -> Select[Message, str | None, float, int]:
    """The best of the newest RELEVANCE_CANDIDATES matches (id <= ceiling), rank then id."""
    where = list(cond.where)
    if ceiling is not None:
        # Messages stored after the first page stay out, so later pages rank the same set.
        where.append(Message.id <= ceiling)
    candidates = (
        select(Message.id, Message.search_vector)
        .where(*where)
        .order_by(Message.date.desc(), Message.id.desc())
        .limit(RELEVANCE_CANDIDATES)
        .subquery("candidates")
    )
    # float8: the rank goes into the cursor and must compare equal when it comes back.
    rank = cast(
        func.ts_rank_cd(candidates.c.search_vector, cond.rank_query, RANK_NORMALIZATION), Float
    )
    ranked = select(
        candidates.c.id,
        rank.label("rank"),
        func.max(candidates.c.id).over().label("ceiling"),
    ).subquery("ranked")
    page = select(ranked).order_by(ranked.c.rank.desc(), ranked.c.id.desc()).limit(limit)
    if after is not None:
        page = page.where(tuple_(ranked.c.rank, ranked.c.id) < tuple_(*after))
    top = page.subquery("page")
    # Only the page's rows are read in full (and their body's head).
    return (
        select(Message, _body_head(), top.c.rank, top.c.ceiling)
        .options(load_only(*SUMMARY_COLUMNS))
        .join(top, top.c.id == Message.id)
        .order_by(top.c.rank.desc(), top.c.id.desc())
    )


def _body_head() -> ColumnElement[str | None]:
    return func.left(Message.text_body, BODY_HEAD_CHARS).label("body_head")


def _tsquery(text: Text) -> ColumnElement[str]:
    parse = func.phraseto_tsquery if text.phrase else func.plainto_tsquery
    return parse(_CONFIG, text.value, type_=TSQUERY)


def _text_query(text: Text, negated: bool) -> ColumnElement[str]:
    query = _tsquery(text)
    return func.tsquery_not(query, type_=TSQUERY) if negated else query


def _combine(
    operator: Callable[..., ColumnElement[str]], queries: list[ColumnElement[str]]
) -> ColumnElement[str]:
    """`queries` (one at least) joined by `operator` as a balanced tree (a 1000-character
    query of single letters is 500 terms: nested one by one they would overflow Python's
    recursion limit)."""
    while len(queries) > 1:
        odd = queries[-1:] if len(queries) % 2 else []
        pairs = zip(queries[0::2], queries[1::2], strict=False)  # the odd one out waits
        queries = [operator(a, b, type_=TSQUERY) for a, b in pairs] + odd
    return queries[0]


def _matches(
    query: ColumnElement[str], vector: SQLColumnExpression[str | None] = Message.search_vector
) -> ColumnElement[bool]:
    return vector.bool_op("@@")(query)


def _condition(term: Term, folders: dict[int, FolderInfo]) -> ColumnElement[bool]:
    atom = term.atom
    condition = _matches(_tsquery(atom)) if isinstance(atom, Text) else _filter(atom, folders)
    # IS NOT TRUE, not NOT: -from:x keeps messages whose from_name is NULL.
    return condition.is_not(true()) if term.negated else condition


def _filter(f: Filter, folders: dict[int, FolderInfo]) -> ColumnElement[bool]:
    value = f.value
    if f.name == "from":
        pattern = _contains(str(value))
        return or_(
            Message.from_name.ilike(pattern, escape="\\"),
            Message.from_email.ilike(pattern, escape="\\"),
        )
    if f.name == "to":
        return Message.recipients.ilike(_contains(str(value)), escape="\\")
    if f.name == "subject":
        # Words of the subject: the index finds them anywhere, the subject's own vector
        # (built as in search_vector) keeps those in the subject.
        query = func.phraseto_tsquery(_CONFIG, value, type_=TSQUERY)
        subject = func.to_tsvector(
            _CONFIG, func.left(func.coalesce(Message.subject, ""), 1000), type_=TSVECTOR
        )
        return and_(_matches(query), _matches(query, subject))
    if f.name == "has":
        return Message.has_attachments.is_(True)
    if f.name == "is":
        return Message.seen.is_(False) if value == "unread" else Message.flagged.is_(True)
    if f.name == "in":
        ids = folder_ids(folders, str(value))
        if not ids:
            return false()
        # One folder as equality: an index scan of ix_messages_folder_date comes out in
        # date order; = ANY(...) would need a sort.
        return Message.folder_id == ids[0] if len(ids) == 1 else Message.folder_id.in_(ids)
    if f.name in ("after", "before") and isinstance(value, date):
        day = datetime.combine(value, time(0), tzinfo=timezone.utc)
        return Message.date >= day if f.name == "after" else Message.date < day
    if f.name == "account":
        return Message.account_id == value
    raise AssertionError(f"unhandled filter {f.name}")  # syntax.parse admits no other


def _contains(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
