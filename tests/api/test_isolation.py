"""Tenant isolation, probed over every route of the app.

The probe walks the URL map, so a route added later is covered without anyone remembering to
add it here: a route whose id parameter has no entry in `other_tenant_ids` fails the test.
"""

from __future__ import annotations

import re

import pytest

from tests.mailbox import add_account, message, stored

PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


@pytest.fixture
def other_tenant_ids(tenant_b, mailbox, make_syncer, ctx, db_sessionmaker) -> dict[str, int]:
    """One resource of each kind owned by tenant B, by the URL parameter naming it: an account
    with a synced message that has an attachment, a draft and an outbox entry."""
    from app.services.compose import DraftContent, create_draft, send_draft

    mailbox.append(
        "INBOX",
        message(
            subject="B's secret", attachments=[("b.txt", "text/plain", b"only B may read this")]
        ),
    )
    account_id = add_account(ctx, tenant_b.tenant_id, mailbox)
    make_syncer().sync_account(account_id)
    [message_id] = [m.id for m in stored(db_sessionmaker, account_id)["INBOX"].values()]
    with ctx.work(tenant_b.tenant_id) as unit:
        content = DraftContent(account_id, [mailbox.email], [], [], "B's", "x", None, None, [])
        entry = send_draft(unit, create_draft(unit, content).draft.id, None)
        draft_id = create_draft(unit, content).draft.id  # still a draft
    return {
        "account_id": account_id,
        "message_id": message_id,
        "index": 0,
        "draft_id": draft_id,
        "outbox_id": entry.id,
    }


def id_routes(app):
    for rule in app.url_map.iter_rules():
        params = PARAM.findall(rule.rule)
        if rule.rule.startswith("/api/") and params:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield rule, method, [name for _, name in params]


def test_probe_covers_the_account_and_message_routes(app):
    probed = {(rule.rule, method) for rule, method, _ in id_routes(app)}
    assert ("/api/accounts/<int:account_id>", "DELETE") in probed
    assert ("/api/accounts/<int:account_id>", "PATCH") in probed
    assert ("/api/messages/<int:message_id>/attachments/<int:index>", "GET") in probed
    assert ("/api/messages/<int:message_id>/move", "POST") in probed


def test_no_route_reaches_another_tenants_resources(
    app, client, tenant_a, tenant_b, other_tenant_ids
):
    before = client.get(f"/api/accounts/{other_tenant_ids['account_id']}", headers=tenant_b.headers)
    for rule, method, params in id_routes(app):
        missing = [p for p in params if p not in other_tenant_ids]
        assert not missing, f"{rule.rule}: add an id of tenant B for {missing} to other_tenant_ids"
        path = PARAM.sub(lambda m: str(other_tenant_ids[m.group(2)]), rule.rule)
        # A plausible body too: existence is checked before the body, so still 404.
        response = client.open(path, method=method, json={}, headers=tenant_a.headers)
        assert response.status_code == 404, f"{method} {path} -> {response.status_code}"
        assert response.get_json()["error"]["code"] == "not_found"
        # The owner's tenant in X-Tenant-ID does not help either.
        spoofed = client.open(
            path, method=method, json={}, headers={**tenant_a.headers, "X-Tenant-ID": tenant_b.slug}
        )
        assert spoofed.status_code == 403, (
            f"{method} {path} with X-Tenant-ID -> {spoofed.status_code}"
        )
    after = client.get(f"/api/accounts/{other_tenant_ids['account_id']}", headers=tenant_b.headers)
    assert after.status_code == 200
    assert after.get_json() == before.get_json()


def test_lists_show_only_the_callers_rows(
    client, tenant_a, tenant_b, other_tenant_ids, mail_account_body
):
    mine = client.post(
        "/api/accounts", json=mail_account_body(), headers=tenant_a.headers
    ).get_json()
    listed = client.get("/api/accounts", headers=tenant_a.headers).get_json()
    assert [a["id"] for a in listed["items"]] == [mine["id"]]
    theirs = client.get("/api/accounts", headers=tenant_b.headers).get_json()
    assert [a["id"] for a in theirs["items"]] == [other_tenant_ids["account_id"]]


def test_guessed_ids_of_every_kind_are_404(client, tenant_a):
    for guess in (0, 1, 2, 3, 10, 99, 2**31 - 1):
        response = client.get(f"/api/accounts/{guess}", headers=tenant_a.headers)
        assert response.status_code == 404


def test_a_tenant_bound_session_cannot_write_another_tenants_row(
    db_sessionmaker, tenant_a, tenant_b, client, other_tenant_ids
):
    from app.models import Account
    from app.tenancy import CrossTenantWrite, bind_tenant

    with db_sessionmaker() as unbound:
        theirs = unbound.get(Account, other_tenant_ids["account_id"])
        unbound.expunge(theirs)
    with db_sessionmaker() as session:
        bind_tenant(session, tenant_a.tenant_id)
        assert session.get(Account, other_tenant_ids["account_id"]) is None
        merged = session.merge(theirs, load=False)
        merged.display_name = "hijacked"
        with pytest.raises(CrossTenantWrite):
            session.flush()


def test_routes_without_an_id_report_only_the_callers_tenant(
    client, tenant_a, tenant_b, other_tenant_ids
):
    """GET /api/usage names no resource: it must count the caller's rows, never B's."""
    mine = client.get("/api/usage", headers=tenant_a.headers).get_json()
    assert (mine["accounts"], mine["storage_bytes"]) == (0, 0)
    theirs = client.get("/api/usage", headers=tenant_b.headers).get_json()
    assert theirs["accounts"] == 1 and theirs["storage_bytes"] > 0
