"""GET /api/sync/search over HTTP: shape, errors, pagination, tenants, hostile queries."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import text

from app.services.search.cursors import CURSOR_PATTERN
from app.services.search.grammar import QUERY_PATTERN
from tests.mailbox import PDF, message
from tests.services.search_corpus import Mailboxes, utc

URL = "/api/sync/search"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def mail_of(ctx):
    def make(tenant) -> tuple[Mailboxes, int]:
        boxes = Mailboxes(ctx, tenant.tenant_id)
        account = boxes.account(f"{tenant.slug}@example.test")
        return boxes, boxes.folder(account, "INBOX", "inbox")

    return make


def get(client, tenant, query: str | None = None, **params):
    if query is not None:
        params["query"] = query
    return client.get(URL, query_string=params, headers=tenant.headers)


def test_needs_authentication(client):
    response = client.get(URL, query_string={"query": "x"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


def test_tenant_header_must_match(client, tenant_a, tenant_b):
    response = client.get(
        URL, query_string={"query": "x"}, headers={**tenant_a.headers, "X-Tenant-ID": tenant_b.slug}
    )
    assert response.status_code == 403


def test_a_hit_is_a_summary_with_a_snippet(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    message_id = boxes.store(
        inbox,
        message(
            "Quarterly numbers",
            "The <b>quarterly</b> numbers & more.",
            sender="Jörg Müller <joerg@example.test>",
            to="Ana <ana@example.test>, bo@example.test",
            cc="Cy <cy@example.test>",
            date=utc(2024, 5, 6, 7, 8, 9),
            attachments=[PDF],
        ),
        seen=False,
        flagged=True,
    )
    response = get(client, tenant_a, "quarterly")
    assert response.status_code == 200
    body = response.get_json()
    assert body["next_cursor"] is None
    (hit,) = body["items"]
    assert hit == {
        "id": message_id,
        "account_id": hit["account_id"],
        "folder": "INBOX",
        "uid": 1,
        "subject": "Quarterly numbers",
        "from": {"name": "Jörg Müller", "email": "joerg@example.test"},
        "to": [
            {"name": "Ana", "email": "ana@example.test"},
            {"name": None, "email": "bo@example.test"},
        ],
        "cc": [{"name": "Cy", "email": "cy@example.test"}],
        "date": "2024-05-06T07:08:09.000Z",
        "flags": {"seen": False, "flagged": True, "answered": False, "draft": False},
        "has_attachments": True,
        "size": hit["size"],
        "too_large": False,
        "over_quota": False,
        "snippet": "The &lt;b&gt;<mark>quarterly</mark>&lt;/b&gt; numbers &amp; more.",
    }
    assert hit["size"] > 0 and RFC3339_MS.match(hit["date"])


def test_script_in_a_body_comes_back_escaped(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    boxes.store(inbox, message("x", "<script>alert(document.cookie)</script> evil payload"))
    (hit,) = get(client, tenant_a, "payload").get_json()["items"]
    assert "<script>" not in hit["snippet"]
    assert hit["snippet"] == (
        "&lt;script&gt;alert(document.cookie)&lt;/script&gt; evil <mark>payload</mark>"
    )


def test_tenants_never_see_each_others_hits(client, tenant_a, tenant_b, mail_of):
    a, a_inbox = mail_of(tenant_a)
    b, b_inbox = mail_of(tenant_b)
    a.store(a_inbox, message("Shared", "common word and alphaonly"))
    b.store(b_inbox, message("Shared", "common word and betaonly"))
    assert get(client, tenant_a, "betaonly").get_json()["items"] == []
    assert get(client, tenant_b, "alphaonly").get_json()["items"] == []
    for tenant, own in ((tenant_a, "alphaonly"), (tenant_b, "betaonly")):
        items = get(client, tenant, "common").get_json()["items"]
        assert len(items) == 1 and own in items[0]["snippet"]


def test_an_empty_query_lists_all_mail_newest_first(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    old = boxes.store(inbox, message("Old", "one", date=utc(2020, 1, 1)))
    new = boxes.store(inbox, message("New", "two", date=utc(2021, 1, 1)))
    for query in ("", "   ", "&&"):
        items = get(client, tenant_a, query).get_json()["items"]
        assert [i["id"] for i in items] == [new, old]


def test_pages_follow_the_cursor_without_duplicates_or_gaps(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    first = {
        boxes.store(inbox, message("P", "paged", date=utc(2024, 1, 1 + i % 5))) for i in range(12)
    }
    seen, cursor = [], None
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        body = get(client, tenant_a, "paged", **params).get_json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        boxes.store(inbox, message("P", "paged", date=utc(2024, 1, 3)))  # lands beside the cursor
        boxes.store(inbox, message("P", "paged", date=utc(2030, 1, 1)))
    assert len(seen) == len(set(seen))
    assert first <= set(seen)


def test_sort_relevance_and_limits(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    body_hit = boxes.store(inbox, message("Other", "about zebras", date=utc(2024, 2, 1)))
    subject_hit = boxes.store(inbox, message("Zebras", "striped", date=utc(2024, 1, 1)))
    by_date = get(client, tenant_a, "zebras").get_json()["items"]
    assert [i["id"] for i in by_date] == [body_hit, subject_hit]
    by_rank = get(client, tenant_a, "zebras", sort="relevance").get_json()["items"]
    assert [i["id"] for i in by_rank] == [subject_hit, body_hit]
    assert get(client, tenant_a, "zebras", limit=100000).status_code == 200  # clamped to 500
    one = get(client, tenant_a, "zebras", limit=1, sort="relevance").get_json()
    assert len(one["items"]) == 1 and one["next_cursor"]
    rest = get(client, tenant_a, "zebras", sort="relevance", cursor=one["next_cursor"])
    assert [i["id"] for i in rest.get_json()["items"]] == [body_hit]
    # A cursor continues the order it came from, whatever sort says.
    rest = get(client, tenant_a, "zebras", cursor=one["next_cursor"])
    assert [i["id"] for i in rest.get_json()["items"]] == [body_hit]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "query"),
        ({"query": "x", "sort": "size"}, "sort"),
        ({"query": "x", "limit": "0"}, "limit"),
        ({"query": "x", "limit": "ten"}, "limit"),
        ({"query": "x", "cursor": "not-a-cursor"}, "cursor"),
        ({"query": "x", "cursor": "eyJrIjogNX0"}, "cursor"),  # {"k": 5}: not a search cursor
    ],
)
def test_bad_parameters_are_422(client, tenant_a, params, field):
    response = client.get(URL, query_string=params, headers=tenant_a.headers)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == [field]


MALFORMED = [
    ('"open phrase', "never closed"),
    ("colour:red", "unknown filter 'colour:'"),
    ("after:2024-02-30", "after: takes a date as YYYY-MM-DD"),
    ("before:01/02/2024", "before: takes a date as YYYY-MM-DD"),
    ("account:abc", "account: takes an account id"),
    ("x" * 1001, "longer than 1000 characters"),
    ("alpha OR", "OR needs a term on each side"),
    ("OR alpha", "OR needs a term on each side"),
    ("is:important", "is: takes unread or flagged"),
]


@pytest.mark.parametrize(("query", "problem"), MALFORMED, ids=[ascii(q[:30]) for q, _ in MALFORMED])
def test_malformed_queries_are_422_naming_the_problem(client, tenant_a, query, problem):
    response = get(client, tenant_a, query)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert problem in error["message"]
    assert error["details"][0]["field"] == "query"


HOSTILE = [
    "'; DROP TABLE messages; --",
    "x'; DROP TABLE messages; --",
    '" OR 1=1 --"',
    "' OR ''='",
    "\\",
    "\\\\'\\",
    "a & b | !c <-> d:*",
    "foo:* & bar",
    "!! & | <-> <2> :* :A",
    "'a':* & 'b'",
    "(a | b) & !c",
    "from:'; DROP TABLE messages; --",
    'from:"%"',
    "from:_",
    "from:\\",
    "to:%_%",
    "subject:'\\''",
    "subject:\"a' & 'b\"",
    'in:"\'; DROP TABLE folders; --"',
    "after:0001-01-01 before:9999-12-31",
    "account:999999999999999999",
    '-"" - -- "" ---',
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽ \u202e \ufeff",
    "a" * 1000,
    " ".join(["or"] * 50),
    "x\x00y",
    "x" * 5000,
    "w " * 51,
    'from:"unterminated',
]


@pytest.mark.parametrize("query", HOSTILE, ids=[ascii(q[:30]) for q in HOSTILE])
def test_hostile_queries_get_results_or_a_422_never_a_500(client, tenant_a, mail_of, query):
    boxes, inbox = mail_of(tenant_a)
    boxes.store(inbox, message("Normal", "drop table messages is just text here"))
    response = get(client, tenant_a, query)
    assert response.status_code in (200, 422), response.get_json()
    if response.status_code == 422:
        assert response.get_json()["error"]["code"] == "validation_error"
    # Nothing was executed as SQL: the table and the mail are still there.
    assert len(get(client, tenant_a, "normal").get_json()["items"]) == 1


def test_bytes_that_are_not_utf8_are_not_a_500(client, tenant_a):
    response = client.get(URL + "?query=%ff%fe%00", headers=tenant_a.headers)
    assert response.status_code in (200, 422)
    response = client.get(URL + "?query=%ff%fe", headers=tenant_a.headers)
    assert response.status_code in (200, 422)


def test_the_document_describes_the_endpoint(client, db):
    document = client.get("/openapi.json").get_json()
    search = document["paths"]["/api/sync/search"]["get"]
    parameters = {p["name"]: p for p in search["parameters"]}
    assert set(parameters) == {"query", "sort", "limit", "cursor"}
    assert all(p["in"] == "query" for p in parameters.values())
    assert parameters["query"]["required"] is True
    assert parameters["query"]["schema"] == {
        "type": "string",
        "maxLength": 1000,
        "pattern": QUERY_PATTERN,
    }
    assert parameters["cursor"]["schema"] == {"type": "string", "pattern": CURSOR_PATTERN}
    assert parameters["sort"]["schema"]["enum"] == ["date", "relevance"]
    assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1}
    assert {"200", "401", "403", "422", "429", "503"} <= set(search["responses"])
    assert search["security"] == [{"bearer": []}]
    hit = document["components"]["schemas"]["SearchHit"]
    assert {"from", "snippet", "flags", "folder"} <= set(hit["properties"])
    # The document describes what the database really holds: the table is still there.
    assert db.execute(text("SELECT to_regclass('messages') IS NOT NULL")).scalar_one()


def test_dates_cover_the_whole_utc_day(client, tenant_a, mail_of):
    boxes, inbox = mail_of(tenant_a)
    midnight = utc(2024, 6, 1)
    names = {}
    for label, moment in (
        ("last second before", midnight - timedelta(seconds=1)),
        ("midnight", midnight),
        ("last second of the day", midnight + timedelta(days=1, seconds=-1)),
        ("next midnight", midnight + timedelta(days=1)),
    ):
        names[boxes.store(inbox, message("Edge", "edgeword", date=moment))] = label

    def labels(query):
        return {names[i["id"]] for i in get(client, tenant_a, query).get_json()["items"]}

    assert labels("edgeword after:2024-06-01 before:2024-06-02") == {
        "midnight",
        "last second of the day",
    }
    assert labels("edgeword before:2024-06-01") == {"last second before"}
    assert labels("edgeword after:2024-06-02") == {"next midnight"}
