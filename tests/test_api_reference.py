"""docs/api.md: current with the code, complete, and rendered from any shape of document."""

from __future__ import annotations

import re

from scripts.api_reference import (
    TARGET,
    current_document,
    error_codes,
    heading_anchors,
    render,
)


def test_the_committed_reference_matches_the_code():
    rendered = render(current_document(), error_codes())
    committed = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
    assert committed == rendered, "docs/api.md is out of date: run `make docs`"


def test_every_operation_and_schema_has_a_section_and_every_link_lands():
    document = current_document()
    text = render(document, error_codes())
    headings = [heading for heading, _ in heading_anchors(text)]
    for path, item in document["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in headings
    for name in document["components"]["schemas"]:
        assert name in headings
    anchors = {anchor for _, anchor in heading_anchors(text)}
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, target
    for status, code in error_codes():
        assert f"| {status} | `{code}` |" in text


ENUM_DOCUMENT = {
    "openapi": "3.1.0",
    "paths": {
        "/api/things/{thing_id}": {
            "get": {
                "summary": "Read a thing",
                "tags": ["things"],
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "thing_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {"$ref": "#/components/schemas/ThingState"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The thing.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}
                        },
                    }
                },
            }
        }
    },
    "components": {
        "schemas": {
            "ThingState": {"enum": ["active", "auth_failed"], "type": "string", "title": "State"},
            "Thing": {
                "type": "object",
                "required": ["state", "tags"],
                "properties": {
                    "state": {"$ref": "#/components/schemas/ThingState"},
                    "previous": {
                        "anyOf": [{"$ref": "#/components/schemas/ThingState"}, {"type": "null"}]
                    },
                    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z|]+$"}},
                },
            },
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


def test_enums_as_components_are_linked_and_their_values_listed():
    text = render(ENUM_DOCUMENT, [(404, "not_found")])
    assert "| `state` | query | [ThingState](#thingstate) | no |" in text
    assert "| `state` | [ThingState](#thingstate) | yes |" in text
    assert "| `previous` | [ThingState](#thingstate) or null | no |" in text
    assert "### ThingState\n\nType: string; one of `active`, `auth_failed`." in text
    # A pipe inside a pattern must not split the table's cell.
    assert r"pattern `^[a-z\|]+$`" in text
    assert "Authentication: `Authorization: Bearer <token>`" in text
