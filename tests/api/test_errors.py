"""One error shape everywhere, and an OpenAPI document that matches the routes."""

from __future__ import annotations

import re

from openapi_spec_validator import validate


def test_unknown_route_is_a_json_404(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response.get_json() == {"error": {"code": "not_found", "message": "No such resource."}}


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.post("/health")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_an_unexpected_exception_is_a_500_without_traceback(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "Internal error."}
    }


def test_openapi_describes_every_route_and_is_valid(client, app):
    document = client.get("/openapi.json").get_json()
    validate(document)
    described = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.docs_assets"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in described, f"{method} {rule.rule} is undocumented"


def test_docs_page_loads_its_assets_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/docs/assets/js/swagger-ui-bundle.js" in html
    assert "http" not in html.split("<body>")[1]  # nothing fetched from another origin
    asset = client.get("/docs/assets/js/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.data) > 100_000
