"""Search: the query language, each filter alone and combined, tenants, order, pages, snippets.

The corpus is stored the way the sync stores mail (parse_message and _message_row on real
MIME bytes); one case syncs from the stack's Dovecot with the real Syncer.
"""

from __future__ import annotations

import re
import time
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from app.errors import ValidationFailed
from app.models import Folder, Message
from app.services import indexing
from app.services.search.grammar import QUERY_PATTERN
from app.services.search.syntax import MAX_QUERY_CHARS, Filter, Term, Text, parse
from tests.conftest import make_tenant_user
from tests.mailbox import PDF, UserPool, add_account, message
from tests.services.search_corpus import Mailboxes, utc

# -- the query language -------------------------------------------------------------------------


def test_parse_groups_words_phrases_negations_and_or():
    query = parse('alpha "beta gamma" -delta one OR two -in:Trash from:"Jörg Müller"')
    assert query.groups == [
        [Term(Text("alpha"))],
        [Term(Text("beta gamma", phrase=True))],
        [Term(Text("delta"), negated=True)],
        [Term(Text("one")), Term(Text("two"))],
        [Term(Filter("in", "Trash"), negated=True)],
        [Term(Filter("from", "Jörg Müller"))],
    ]


def test_parse_types_filter_values():
    query = parse("after:2024-02-29 before:2024-03-01 account:42 is:UNREAD has:attachment")
    assert [t.atom for t in query.terms()] == [
        Filter("after", date(2024, 2, 29)),
        Filter("before", date(2024, 3, 1)),
        Filter("account", 42),
        Filter("is", "unread"),
        Filter("has", "attachment"),
    ]


def test_words_without_letters_or_digits_are_ignored():
    assert parse("& | ! <-> :* alpha").groups == [[Term(Text("alpha"))]]
    assert parse("10:30").groups == [[Term(Text("10:30"))]]  # not a filter: digits
    # They still stand next to OR, and leave the other side alone.
    assert parse("alpha OR && beta").groups == [[Term(Text("alpha"))], [Term(Text("beta"))]]
    # Nothing at all to search for: every message matches.
    for empty in ("", "   ", "&& --", '""', "- -"):
        assert parse(empty).groups == []


def test_separators_quotes_and_dashes():
    assert parse('foo"bar baz"qux').groups == [
        [Term(Text("foo"))],
        [Term(Text("bar baz", phrase=True))],
        [Term(Text("qux"))],
    ]
    assert parse("--x -OR OR-x").groups == [
        [Term(Text("-x"), negated=True)],
        [Term(Text("OR"), negated=True)],
        [Term(Text("OR-x"))],
    ]
    assert parse('"a"OR"b"').groups == [
        [Term(Text("a", phrase=True)), Term(Text("b", phrase=True))]
    ]
    # U+00A0 is not a separator of the syntax (PostgreSQL still splits words at it).
    assert parse("a\u00a0b").groups == [[Term(Text("a\u00a0b"))]]
    assert parse('from:" " in:Archive:2024').terms() == [
        Term(Filter("from", " ")),
        Term(Filter("in", "Archive:2024")),
    ]


MALFORMED = [
    ('"unbalanced', "quote at position 1 is never closed"),
    ('from:"Jörg', "quote at position 6 is never closed"),
    ("foo:bar", "unknown filter 'foo:'"),
    ("re: lunch", "unknown filter 're:'"),
    ("from:", "from: needs a value"),
    ("to: bob", "to: needs a value"),
    ('subject:""', "subject: needs a value"),
    ("after:2024-13-01", "after: takes a date as YYYY-MM-DD, not '2024-13-01'"),
    ("before:yesterday", "before: takes a date as YYYY-MM-DD"),
    ("after:２０２４-01-01", "after: takes a date"),
    ("account:abc", "account: takes an account id (a number), not 'abc'"),
    ("account:-1", "account: takes an account id"),
    ("is:read", "is: takes unread or flagged, not 'read'"),
    ("has:pdf", "has: takes attachment"),
    ("OR alpha", "OR needs a term on each side"),
    ("alpha OR", "OR needs a term on each side"),
    ("alpha OR OR beta", "OR needs a term on each side"),
    ("alpha OR", "OR needs a term on each side"),
    ('"alpha"OR', "OR needs a term on each side"),
    ("x" * 1001, "longer than 1000 characters"),
    ("alpha\x00beta", "NUL character"),
    ('a "b" "c', "quote at position 7 is never closed"),
    ("xfrom:bob", "unknown filter 'xfrom:'"),
    ("-foo:bar", "unknown filter 'foo:'"),
    ("after:2023-02-29", "after: takes a date"),
    ("after:0000-01-01", "after: takes a date"),
    ("before:20240101", "before: takes a date"),
    ('after:" 2024-01-01"', "after: takes a date"),
    ("account:1234567890123456789", "account: takes an account id"),
]


@pytest.mark.parametrize(("query", "problem"), MALFORMED, ids=[ascii(q[:30]) for q, _ in MALFORMED])
def test_malformed_queries_name_the_problem(query, problem):
    with pytest.raises(ValidationFailed) as raised:
        parse(query)
    assert problem in raised.value.message
    assert raised.value.details == [
        {"field": "query", "message": raised.value.details[0]["message"]}
    ]
    published = re.search(QUERY_PATTERN, query) and len(query) <= MAX_QUERY_CHARS
    assert not published, "the published pattern must refuse it too"


FRAGMENTS = [
    *("OR", "or", "Or", "from:", "To:", "subject:", "in:", "AFTER:", "before:", "account:"),
    *("is:", "has:", "unread", "FLAGGED", "attachment", "2024-02-29", "2023-02-29", "1900-02-29"),
    *("2000-02-29", "2024-13-01", "0000-01-01", "9999-12-31", "12", "1234567890123456789"),
    *("foo:", "x:", ":", " ", "  ", "\t", "\n", "\x0b", '"', "-", "--", "a", "é", "&", "\x00"),
    *("\x85", "\xa0", "\u3000", "\u2028", "OR-", "ORx", "O", "R", "_", "'", "\\", "%"),
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=12).map("".join))
def test_the_published_pattern_accepts_exactly_what_parse_accepts(query):
    try:
        parse(query)
        accepted = True
    except ValidationFailed:
        accepted = False
    # JSON Schema's reading of a pattern: a search, with maxLength beside it.
    assert accepted == bool(re.search(QUERY_PATTERN, query) and len(query) <= MAX_QUERY_CHARS)


def test_the_pattern_is_quick_to_refuse_long_queries():
    for query in ("a " * 499 + '"', '-"a"' * 249 + '"', "a OR " * 199 + "OR", " " * 990 + "x:"):
        started = time.perf_counter()
        assert not re.search(QUERY_PATTERN, query)
        assert time.perf_counter() - started < 0.5


# -- a corpus of two tenants ------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(ctx):
    """Tenant A's mail (two accounts) and tenant B's, by name."""
    a = Mailboxes(ctx, make_tenant_user(ctx, "sa").tenant_id)
    b = Mailboxes(ctx, make_tenant_user(ctx, "sb").tenant_id)
    a1, a2, b1 = a.account("a1@example.test"), a.account("a2@example.test"), b.account("b@x.test")
    inbox = a.folder(a1, "INBOX", "inbox")
    sent = a.folder(a1, "Sent", "sent")
    archive = a.folder(a1, "Archive/2024")
    trash = a.folder(a1, "Trash", "trash")
    inbox2 = a.folder(a2, "INBOX", "inbox")
    data = a.folder(a2, "Données")
    b_inbox = b.folder(b1, "INBOX", "inbox")
    m = {}
    m["munich"] = a.store(
        inbox,
        message(
            "Trip to München",
            "We meet in München next week, near the station.",
            sender="Jörg Müller <joerg@example.test>",
            to="a1@example.test",
            date=utc(2024, 3, 1, 10),
        ),
        seen=False,
    )
    m["naive"] = a.store(
        archive,
        message(
            "Design notes",
            "A naïve approach to caching.",
            sender="Bob <bob@example.test>",
            date=utc(2024, 3, 2),
        ),
        flagged=True,
    )
    m["fox"] = a.store(
        inbox,
        message(
            "Animals",
            "the quick brown fox jumps",
            "Carol <carol@example.test>",
            date=utc(2024, 3, 3),
        ),
    )
    m["xof"] = a.store(
        inbox,
        message(
            "More animals",
            "the brown quick fox sleeps",
            "Carol <carol@example.test>",
            date=utc(2024, 3, 4),
        ),
    )
    m["invoice"] = a.store(
        inbox,
        message(
            "Invoice 2024-001",
            "Please find the invoice attached.",
            sender="Billing <billing@shop.test>",
            date=utc(2024, 1, 31, 23, 59, 59),
            attachments=[PDF],
        ),
    )
    m["invoice_feb"] = a.store(
        inbox2,
        message(
            "Invoice February",
            "Second invoice, as discussed.",
            sender="billing@shop.test",
            to="a2@example.test",
            cc="Accounting <acct@corp.test>",
            date=utc(2024, 2, 1),
        ),
        seen=False,
        flagged=True,
    )
    m["trash"] = a.store(
        trash, message("Old invoice", "An invoice from last year.", date=utc(2024, 2, 15))
    )
    m["lunch"] = a.store(
        sent,
        message(
            "Lunch",
            "Lunch tomorrow? Let us try the new place.",
            sender="A1 <a1@example.test>",
            to="Dave Smith <dave.smith@example.test>",
            date=utc(2024, 2, 20),
        ),
    )
    m["script"] = a.store(
        data,
        message(
            "Escapes",
            "<script>alert('x')</script> hello world & goodbye",
            date=utc(2024, 2, 21),
        ),
    )
    # A copy of an older UIDVALIDITY (a reload in progress): not current, never a hit.
    stale = a.store(inbox, message("Ghost", "ghostword in a stale copy"), validity=6)
    m["secret"] = b.store(
        b_inbox, message("Bananas", "bananarama: only tenant B has this word. Invoice too.")
    )
    return {
        "a": a,
        "b": b,
        "ids": m,
        "names": {v: k for k, v in m.items()},
        "accounts": {"a1": a1, "a2": a2, "b1": b1},
        "stale": stale,
    }


def found(corpus, query: str, tenant: str = "a", **options) -> list[str]:
    """Names of the hits of `query`, in order."""
    page = corpus[tenant].search(query, **options)
    return [corpus["names"].get(hit.message.id, hit.message.id) for hit in page.hits]


def as_set(corpus, query: str, **options) -> set[str]:
    return set(found(corpus, query, **options))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # words, case and accents folded both ways
        ("München", {"munich"}),
        ("münchen", {"munich"}),
        ("MUNCHEN", {"munich"}),
        ("naïve", {"naive"}),
        ("naive", {"naive"}),
        ("NAIVE caching", {"naive"}),
        ("station", {"munich"}),
        # words of addresses: names, whole addresses, and their parts
        ("Müller", {"munich"}),
        ("joerg@example.test", {"munich"}),
        ("dave.smith@example.test", {"lunch"}),
        ("smith", {"lunch"}),
        ("shop", {"invoice", "invoice_feb"}),
        # phrases keep their order; words do not
        ('"quick brown fox"', {"fox"}),
        ("quick brown fox", {"fox", "xof"}),
        ('"brown quick"', {"xof"}),
        # exclusion
        ("fox -jumps", {"xof"}),
        ('fox -"quick brown"', {"xof"}),
        ("invoice -february", {"invoice", "trash"}),
        # OR, and its precedence over the implicit AND
        ("naïve OR lunch", {"naive", "lunch"}),
        ("invoice attached OR february", {"invoice", "invoice_feb"}),
        ("jumps OR sleeps -quick", set()),
        ("invoice -attached -year", {"invoice_feb"}),
        # nothing of the stale copy, nothing of tenant B
        ("ghostword", set()),
        ("bananarama", set()),
    ],
)
def test_words_phrases_exclusion_or(corpus, query, expected):
    assert as_set(corpus, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("from:müller", {"munich"}),
        ("from:MÜLLER", {"munich"}),
        ('from:"Jörg Müller"', {"munich"}),
        ("from:shop.test", {"invoice", "invoice_feb"}),
        ("from:billing@", {"invoice", "invoice_feb"}),
        ("from:100%", set()),  # % and _ are literal, not wildcards
        ("from:b_b", set()),
        ("invoice -from:billing", {"trash"}),
        ("to:dave.smith", {"lunch"}),
        ("to:Dave", {"lunch"}),
        ("to:accounting", {"invoice_feb"}),  # cc counts
        ("to:a2@example", {"invoice_feb"}),
        ("subject:invoice", {"invoice", "invoice_feb", "trash"}),
        ("subject:Invoice -in:trash", {"invoice", "invoice_feb"}),
        ('subject:"invoice february"', {"invoice_feb"}),
        ("subject:attached", set()),  # a body word, not a subject word
        ("subject:munchen", {"munich"}),
        ("has:attachment", {"invoice"}),
        ("invoice -has:attachment", {"invoice_feb", "trash"}),
        ("is:unread", {"munich", "invoice_feb"}),
        ("is:flagged", {"naive", "invoice_feb"}),
        ("is:unread -is:flagged", {"munich"}),
        ("is:flagged OR is:unread", {"munich", "naive", "invoice_feb"}),
        ("in:INBOX", {"munich", "fox", "xof", "invoice", "invoice_feb"}),
        ("in:inbox", {"munich", "fox", "xof", "invoice", "invoice_feb"}),
        ("in:Inbox fox", {"fox", "xof"}),
        ("in:Archive/2024", {"naive"}),
        ('in:"Archive/2024"', {"naive"}),
        ("in:archive/2024", set()),  # names other than INBOX are exact
        ("in:Données", {"script"}),
        ("in:trash", {"trash"}),  # the role
        ("in:Trash", {"trash"}),  # the name
        ("in:sent", {"lunch"}),
        ("in:Sent lunch", {"lunch"}),
        ("in:nowhere", set()),
        ("invoice -in:Trash", {"invoice", "invoice_feb"}),
        ("in:Trash OR in:sent", {"trash", "lunch"}),
        ("in:INBOX -in:inbox", set()),
        # dates: after is on or after midnight UTC, before is strictly before it
        ("invoice after:2024-02-01", {"invoice_feb", "trash"}),
        ("invoice before:2024-02-01", {"invoice"}),
        ("invoice after:2024-01-31 before:2024-02-02", {"invoice", "invoice_feb"}),
        ("invoice after:2024-02-02", {"trash"}),
        ("invoice -after:2024-02-01", {"invoice"}),
        ("after:2024-03-04 before:2024-03-05", {"xof"}),
        ("after:2024-03-05", set()),
        # combined
        ("from:billing is:unread has:attachment", set()),
        ("from:billing is:unread", {"invoice_feb"}),
        ("fox in:INBOX after:2024-03-04 from:carol", {"xof"}),
        ('from:"Jörg Müller" "next week" is:unread in:inbox before:2024-03-02', {"munich"}),
    ],
)
def test_filters_alone_and_combined(corpus, query, expected):
    assert as_set(corpus, query) == expected


def test_account_filter(corpus):
    a1, a2, b1 = corpus["accounts"]["a1"], corpus["accounts"]["a2"], corpus["accounts"]["b1"]
    assert as_set(corpus, f"invoice account:{a2}") == {"invoice_feb"}
    assert as_set(corpus, f"invoice -account:{a2}") == {"invoice", "trash"}
    assert as_set(corpus, f"account:{a2}") == {"invoice_feb", "script"}
    assert as_set(corpus, f"account:{a1} OR account:{a2}") == set(corpus["ids"]) - {"secret"}
    # Another tenant's account is simply empty, as it would be if it did not exist.
    assert as_set(corpus, f"account:{b1}") == set()
    assert as_set(corpus, "account:999999999") == set()


def test_tenants_see_only_their_own_mail(corpus):
    assert found(corpus, "bananarama", tenant="b") == ["secret"]
    assert found(corpus, "bananarama") == []
    assert found(corpus, "invoice", tenant="b") == ["secret"]
    assert "secret" not in as_set(corpus, "invoice")
    b1 = corpus["accounts"]["b1"]
    assert found(corpus, f"account:{b1}", tenant="b") == ["secret"]


def test_newest_first_by_default(corpus):
    assert found(corpus, "invoice") == ["trash", "invoice_feb", "invoice"]
    assert found(corpus, "in:INBOX") == ["xof", "fox", "munich", "invoice_feb", "invoice"]


def test_hits_carry_the_summary_and_folder_name(corpus):
    (hit,) = corpus["a"].search("invoice february").hits
    assert hit.folder == "INBOX"
    assert hit.message.subject == "Invoice February"
    assert hit.message.cc_addrs == [{"name": "Accounting", "email": "acct@corp.test"}]
    (hit,) = corpus["a"].search("naive").hits
    assert hit.folder == "Archive/2024"


def test_snippets_are_escaped_and_mark_the_words(corpus):
    (hit,) = corpus["a"].search("hello").hits
    assert hit.snippet == (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; <mark>hello</mark> world &amp; goodbye"
    )
    (hit,) = corpus["a"].search("naive").hits
    assert hit.snippet == "A <mark>naïve</mark> approach to caching."
    (hit,) = corpus["a"].search('"quick brown fox"').hits
    assert hit.snippet == "the <mark>quick</mark> <mark>brown</mark> <mark>fox</mark> jumps"
    (hit,) = corpus["a"].search("trip").hits  # only in the subject: the subject, marked
    assert hit.snippet == "<mark>Trip</mark> to München"
    (hit,) = corpus["a"].search("in:sent").hits  # no words: the body's start
    assert hit.snippet == "Lunch tomorrow? Let us try the new place."
    (hit,) = corpus["a"].search("-fox subject:munchen").hits
    assert "<mark>München</mark>" in hit.snippet


def test_snippets_come_from_a_bounded_head_of_long_bodies(ctx):
    tenant = Mailboxes(ctx, make_tenant_user(ctx).tenant_id)
    inbox = tenant.folder(tenant.account("long@example.test"), "INBOX", "inbox")
    body = "filler " * 2000 + "needle early. " + "padding " * 400_000 + "needle late."
    tenant.store(inbox, message("Long", body))
    (hit,) = tenant.search("needle").hits
    assert "<mark>needle</mark> early" in hit.snippet
    assert len(hit.snippet) < 300
    (hit,) = tenant.search("filler").hits
    assert hit.snippet.startswith("<mark>filler</mark>")
    # Past the 64 Ki characters the vector holds: stored fine, just not searchable.
    assert tenant.search("late").hits == []


def test_relevance_ranks_subject_over_body_and_short_over_long(ctx):
    tenant = Mailboxes(ctx, make_tenant_user(ctx).tenant_id)
    inbox = tenant.folder(tenant.account("rank@example.test"), "INBOX", "inbox")
    # Stored oldest-ranked-first by date, so relevance order is the reverse of date order.
    names = {}
    names[
        tenant.store(inbox, message("Kumquat season", "Fresh ones are here.", date=utc(2024, 1, 1)))
    ] = "subject"
    names[tenant.store(inbox, message("Fruit", "A kumquat, a kumquat!", date=utc(2024, 1, 2)))] = (
        "body twice"
    )
    names[tenant.store(inbox, message("Fruit", "One kumquat.", date=utc(2024, 1, 3)))] = "body once"
    long_body = "One kumquat among many other words. " + "other words " * 2000
    names[tenant.store(inbox, message("Fruit", long_body, date=utc(2024, 1, 4)))] = "long body"
    by_date = [names[h.message.id] for h in tenant.search("kumquat").hits]
    assert by_date == ["long body", "body once", "body twice", "subject"]
    by_rank = [names[h.message.id] for h in tenant.search("kumquat", sort="relevance").hits]
    assert by_rank == ["subject", "body twice", "body once", "long body"]
    # Without words there is nothing to rank: newest first.
    by_rank = [names[h.message.id] for h in tenant.search("in:INBOX", sort="relevance").hits]
    assert by_rank == by_date


def _all_pages(tenant, query, limit, sort, between=None) -> list[list[int]]:
    pages, cursor = [], None
    while True:
        page = tenant.search(query, sort=sort, limit=limit, cursor=cursor)
        pages.append([h.message.id for h in page.hits])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        if between is not None:
            between(len(pages))


@pytest.mark.parametrize("sort", ["date", "relevance"])
def test_pages_have_no_duplicates_or_gaps_while_mail_arrives(ctx, db_sessionmaker, sort):
    tenant = Mailboxes(ctx, make_tenant_user(ctx).tenant_id)
    inbox = tenant.folder(tenant.account("pages@example.test"), "INBOX", "inbox")
    # Ties on date (three per day) so the id decides; and ranks that tie (same text).
    before = {
        tenant.store(
            inbox, message("Page", f"pagetest {'again ' * (i % 4)}", date=utc(2024, 1, 1 + i // 3))
        )
        for i in range(40)
    }
    arrived = set()

    def deliver(page_number: int) -> None:
        # Newer, older and same-date mail between every two pages.
        for day in (1, 7, 28):
            arrived.add(
                tenant.store(inbox, message("Late", "pagetest late", date=utc(2024, 1, day)))
            )
        arrived.add(tenant.store(inbox, message("Late", "pagetest late", date=utc(2025, 1, 1))))

    pages = _all_pages(tenant, "pagetest", 7, sort, deliver)
    seen = [i for page in pages for i in page]
    assert len(seen) == len(set(seen)), "a message came twice"
    assert before <= set(seen), "a message that was there from the start was skipped"
    assert set(seen) <= before | arrived
    assert all(len(page) == 7 for page in pages[:-1])
    if sort == "relevance":
        # The ranked set is fixed at the first page: what arrived later waits for a new search.
        assert set(seen) == before
    else:
        dates = {}
        with db_sessionmaker() as session:
            for row in session.execute(
                select(Message.id, Message.date).where(Message.id.in_(seen))
            ):
                dates[row.id] = row.date
        keys = [(dates[i], i) for i in seen]
        assert keys == sorted(keys, reverse=True)


def test_limits_and_cursors(corpus):
    first = corpus["a"].search("in:INBOX", limit=2)
    assert len(first.hits) == 2 and first.next_cursor is not None
    rest = corpus["a"].search("in:INBOX", limit=500, cursor=first.next_cursor)
    assert len(rest.hits) == 3 and rest.next_cursor is None


def test_a_cursor_continues_the_order_it_came_from(corpus):
    by_date = corpus["a"].search("invoice", limit=1)
    rest = corpus["a"].search("invoice", sort="relevance", cursor=by_date.next_cursor)
    assert [corpus["names"][h.message.id] for h in rest.hits] == ["invoice_feb", "invoice"]
    by_rank = corpus["a"].search("invoice", sort="relevance", limit=1)
    rest = corpus["a"].search("invoice", cursor=by_rank.next_cursor)
    ranked = corpus["a"].search("invoice", sort="relevance").hits
    assert [h.message.id for h in rest.hits] == [h.message.id for h in ranked[1:]]
    # Nothing to rank without words: a relevance cursor goes on by date from its hit.
    first = ranked[0].message
    rest = corpus["a"].search("in:INBOX OR in:trash", cursor=by_rank.next_cursor)
    assert all((h.message.date, h.message.id) < (first.date, first.id) for h in rest.hits)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x",
        "d",
        "d1",
        "d1_",
        "d_1",
        "dx_1",
        "d1_-1",
        "d1_1_1",
        "r1_1_1_1",
        "rzzzzzzzz_1_1_1",
        "d1234567890123456789_1",
        "d1_1 ",
        "eyJrIjogNX0",
        "d1_1\n\n",
    ],
)
def test_cursors_not_made_by_search_are_refused(corpus, cursor):
    with pytest.raises(ValidationFailed, match="cursor"):
        corpus["a"].search("invoice", cursor=cursor)


@pytest.mark.parametrize(
    "cursor",
    [
        "dn_0",
        "d-999999999999999999_1",
        "d999999999999999999_999999999999999999",
        "r7fc00000_n_1_1",
        "rff800000_1_1_0",
        "r00000000_-1_5_5",
        "d0_1\n",
    ],
)
def test_every_cursor_the_pattern_allows_is_accepted(corpus, cursor):
    corpus["a"].search("invoice", cursor=cursor)
    corpus["a"].search("invoice", sort="relevance", cursor=cursor)
    corpus["a"].search("", cursor=cursor)


def test_stale_copies_return_once_their_folder_catches_up(ctx, db_sessionmaker):
    tenant = Mailboxes(ctx, make_tenant_user(ctx).tenant_id)
    inbox = tenant.folder(tenant.account("reload@example.test"), "INBOX", "inbox", validity=5)
    old = tenant.store(inbox, message("Reload", "reloadword old copy"))
    new = tenant.store(inbox, message("Reload", "reloadword new copy"), validity=9)
    assert [h.message.id for h in tenant.search("reloadword").hits] == [old]
    with db_sessionmaker.begin() as session:  # the swap at the end of a UIDVALIDITY reload
        session.execute(update(Folder).where(Folder.id == inbox).values(uidvalidity=9))
        session.execute(update(Message).where(Message.id == old).values(uidvalidity=5))
    assert [h.message.id for h in tenant.search("reloadword").hits] == [new]


def test_search_needs_a_tenant_bound_session(unit):
    from app.services.search import search

    with pytest.raises(RuntimeError):
        search(unit, "anything")


# -- end to end: mail synced from Dovecot by the real sync ---------------------------------------


def test_mail_synced_from_dovecot_is_found(
    ctx, db_sessionmaker, tenant_a, stack_control, user_pools, make_syncer
):
    mailbox = user_pools.setdefault(stack_control.name, UserPool(stack_control)).take()
    account_id = add_account(ctx, tenant_a.tenant_id, mailbox)
    raw = message(
        subject="Grüße aus Köln",
        body="Das Treffen ist im Büro am Rhein. Zitronenfalter.",
        sender="Jörg Müller <joerg@example.test>",
        to="Ana Lima <ana.lima@example.test>",
    )
    mailbox.append("INBOX", raw)
    mailbox.append("Archive", message(subject="Other", body="nothing to see"))
    assert make_syncer().sync_account(account_id).complete
    tenant = Mailboxes(ctx, tenant_a.tenant_id)
    # Readable at once; found by its words once the indexing job has been over it (a worker
    # runs it: tests/services/test_search_index.py).
    assert tenant.search("zitronenfalter").hits == []
    assert len(tenant.search(f"in:inbox account:{account_id}").hits) == 1
    indexing.index_account(ctx, account_id)
    for query in (
        "zitronenfalter",
        "buro rhein",
        '"im Büro"',
        "subject:koln",
        "from:müller",
        "to:ana.lima",
        "in:inbox Zitronenfalter",
    ):
        hits = tenant.search(query).hits
        assert [h.message.subject for h in hits] == ["Grüße aus Köln"], query
        assert hits[0].folder == "INBOX"
    assert tenant.search("zitronenfalter in:Archive").hits == []
    with db_sessionmaker() as session:
        recipients = session.scalars(
            select(Message.recipients).where(Message.account_id == account_id)
        ).all()
    assert "Ana Lima <ana.lima@example.test>" in recipients
