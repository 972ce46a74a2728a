"""One error shape everywhere, and an OpenAPI document that matches the routes."""

from __future__ import annotations

import json
import re
import secrets

import pytest
from flask import Flask
from openapi_spec_validator import validate
from pydantic import create_model

from app.api.openapi import build_document, operation


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


def test_every_response_forbids_sniffing(app):
    @app.get("/boom-sniff")
    def boom():
        raise RuntimeError("internals")

    client = app.test_client()
    for path in ("/health", "/nothing-here", "/api/accounts", "/openapi.json", "/boom-sniff"):
        response = client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff", path


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,  # deeper than the JSON decoder can recurse
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 33 + "]" * 33,  # decodes, but nests deeper than any request does
        '{"tenant": "x", "username": "u", "password": ' + "[" * 40 + "]" * 40 + "}",
    ],
    ids=["arrays-100k", "objects-100k", "arrays-33", "nested-field"],
)
def test_deeply_nested_json_is_a_400_not_a_500(client, tenant_a, body):
    # An address of its own, so other tests' logins do not spend this one's login limit.
    own = {"REMOTE_ADDR": f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.1"}
    for path, headers in (("/auth/login", {}), ("/api/accounts", tenant_a.headers)):
        response = client.post(
            path, data=body, content_type="application/json", headers=headers, environ_base=own
        )
        assert response.status_code == 400, (path, response.status_code)
        error = response.get_json()["error"]
        assert error["code"] == "bad_request"
        assert "nested deeper than 32 levels" in error["message"]
    # Ordinary nesting still reaches validation (422), one level under the bound included.
    shallow = "[" * 32 + "]" * 32
    response = client.post(
        "/auth/login", data=shallow, content_type="application/json", environ_base=own
    )
    assert response.status_code == 422


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


def test_openapi_publishes_each_model_with_its_own_schema(client, app):
    """Components are named by class name: a draft's attachment and a message's attachment,
    both once called AttachmentOut, shared one entry, so drafts were documented wrongly."""
    components = client.get("/openapi.json").get_json()["components"]["schemas"]
    checked = set()
    for view in app.view_functions.values():
        spec = getattr(view, "openapi", None)
        if spec is None:
            continue
        for model in [spec.request, *(body for _, body in spec.responses.values())]:
            if not isinstance(model, type):
                continue  # no body, or a media type
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
                # As the document went out: through JSON.
                assert components[name] == json.loads(json.dumps(definition)), name
                checked.add(name)
    assert {"DraftOut", "MessageOut"} <= checked


def test_openapi_refuses_two_models_of_one_name():
    app = Flask(__name__)
    for number, model in enumerate(
        [create_model("Thing", a=(int, ...)), create_model("Thing", b=(str, ...))]
    ):
        describe = operation("A thing", responses={200: ("A thing.", model)}, auth=False)
        app.add_url_rule(f"/{number}", f"thing{number}", describe(lambda: ""))
    with pytest.raises(ValueError, match="two different schemas named Thing"):
        build_document(app)


def test_docs_page_loads_its_assets_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/docs/assets/js/swagger-ui-bundle.js" in html
    assert "http" not in html.split("<body>")[1]  # nothing fetched from another origin
    asset = client.get("/docs/assets/js/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.data) > 100_000
