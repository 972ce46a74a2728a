"""The OpenAPI document, built from the routes the app really has.

Each view carries an `Operation` (set by `@operation`); the document is assembled from the URL
map, so a route cannot exist without being described, and the schemas come from the same
pydantic models the views validate with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel
from werkzeug.routing import Rule

from app.schemas.errors import ErrorResponse
from app.version import VERSION

# A response is a model (JSON), a media type string (opaque body), or None (no body).
ResponseSpec = tuple[str, type[BaseModel] | str | None]

# Flask converters -> OpenAPI parameter schemas.
_CONVERTERS = {
    "int": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "string": {"type": "string"},
    "path": {"type": "string"},
}
_RULE_ARG = re.compile(r"<(?:(\w+):)?(\w+)>")
View = TypeVar("View", bound=Callable[..., Any])

ERROR_DESCRIPTIONS = {
    400: "Malformed request.",
    401: "Missing, malformed or expired token.",
    403: "X-Tenant-ID does not match the token.",
    404: "No such resource in this tenant.",
    409: "Conflicts with the resource's state.",
    413: "Request body too large.",
    415: "Request body is not JSON.",
    422: "Validation failed; `details` names the fields.",
    429: "Rate limit exceeded; see Retry-After.",
    503: "A dependency (PostgreSQL, Redis) is unavailable.",
}
# The 403 of an operation that stores something: a tenant's limit is one more reason.
QUOTA_403 = (
    "X-Tenant-ID does not match the token (`forbidden`), or the tenant's limit would be "
    "passed (`quota_exceeded`: TENANT_MAX_ACCOUNTS, TENANT_MAX_STORAGE_BYTES)."
)


@dataclass
class Operation:
    summary: str
    tags: tuple[str, ...] = ()
    request: type[BaseModel] | None = None
    responses: dict[int, ResponseSpec] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    auth: bool = True
    params: type[BaseModel] | None = None  # the query string's parameters
    headers: tuple[dict[str, Any], ...] = ()  # header parameters (OpenAPI Parameter objects)
    quota: bool = False  # may answer 403 quota_exceeded


def operation(
    summary: str,
    *,
    tags: tuple[str, ...] = (),
    request: type[BaseModel] | None = None,
    responses: dict[int, ResponseSpec] | None = None,
    errors: tuple[int, ...] = (),
    auth: bool = True,
    params: type[BaseModel] | None = None,
    headers: tuple[dict[str, Any], ...] = (),
    quota: bool = False,
) -> Callable[[View], View]:
    """Describe a view for the OpenAPI document."""

    def decorate(view: View) -> View:
        # A function attribute (read by build_document), through vars(): Callable has none.
        vars(view)["openapi"] = Operation(
            summary, tags, request, responses or {}, errors, auth, params, headers, quota
        )
        return view

    return decorate


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every described route of `app`."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec: Operation | None = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if spec is None:
            continue
        path = _RULE_ARG.sub(r"{\2}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, spec, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "emailservice", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(rule: Rule, spec: Operation, components: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": spec.summary,
        "tags": list(spec.tags),
        "responses": {},
    }
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _CONVERTERS.get(converter or "string", {"type": "string"}),
        }
        for converter, name in _RULE_ARG.findall(rule.rule)
    ]
    if spec.params is not None:
        parameters += _query_parameters(spec.params)
    parameters += [{"in": "header", **header} for header in spec.headers]
    if parameters:
        result["parameters"] = parameters
    if spec.request is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(spec.request, components)}},
        }
    for status, (description, body) in sorted(spec.responses.items()):
        result["responses"][str(status)] = _response(description, body, components)
    errors = set(spec.errors) | {503}
    if spec.auth:
        result["security"] = [{"bearer": []}]
        errors |= {401, 403, 429}
    if spec.request is not None:
        errors |= {400, 413, 415, 422}
    # A response the operation declares itself (GET /health's 503 carries the health body)
    # wins over the generic error.
    if spec.quota:
        errors.add(403)
    for status in sorted(errors - set(spec.responses)):
        description = QUOTA_403 if status == 403 and spec.quota else ERROR_DESCRIPTIONS[status]
        result["responses"][str(status)] = _response(description, ErrorResponse, components)
    return dict(result, responses=dict(sorted(result["responses"].items())))


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One `in: query` parameter per field of `model` (a query string has no nulls)."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    parameters = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        if prop.get("default", "") is None:
            del prop["default"]
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop.update(branches[0])
        # A parameter's schema stands alone: an enum's definition is written in place.
        ref = prop.pop("$ref", "").removeprefix("#/$defs/")
        if ref in definitions:
            prop = {**definitions[ref], **prop}
        parameter = {"name": name, "in": "query", "required": name in schema.get("required", [])}
        if description:
            parameter["description"] = description
        parameters.append({**parameter, "schema": prop})
    return parameters


def _response(
    description: str, body: type[BaseModel] | str | None, components: dict[str, Any]
) -> dict[str, Any]:
    if body is None:
        return {"description": description}
    if isinstance(body, str):
        schema = {"type": "object"} if body == "application/json" else {"type": "string"}
        return {"description": description, "content": {body: {"schema": schema}}}
    return {
        "description": description,
        "content": {"application/json": {"schema": _schema(body, components)}},
    }


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        # Components are named by class name: two models of one name would share one entry,
        # and the document would describe one of them with the other's schema.
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas named {name} in the OpenAPI document")
    return {"$ref": f"#/components/schemas/{model.__name__}"}
