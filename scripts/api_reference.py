#!/usr/bin/env python3
"""docs/api.md, rendered from the OpenAPI document the app serves (`make docs`).

    python scripts/api_reference.py           # write docs/api.md
    python scripts/api_reference.py --check   # exit 1 when docs/api.md is out of date

The reference is generic over the document: operations grouped by tag, then every component
schema, whatever their shapes ($ref, anyOf, enums, arrays...). Output is deterministic: tags,
paths, schemas and statuses are sorted wherever the document itself gives no order. Lives
outside app/ because the service never needs it; tests/test_api_reference.py keeps the
committed file current.
"""

from __future__ import annotations

import argparse
import http
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
LONG_PATTERN = 100  # characters; longer patterns go below their table, in a fold
# Statuses the app answers that no operation in the document declares.
UNDECLARED_MEANINGS = {
    405: "The path exists, but not with this method; `Allow` lists the methods it has.",
    500: "A bug in the service, never expected: report it with the response's `X-Request-ID`.",
}
# Codes that share their status with another code, by what they mean.
CODE_MEANINGS = {
    "quota_exceeded": "A limit of the tenant would be passed (TENANT_MAX_ACCOUNTS, "
    "TENANT_MAX_STORAGE_BYTES): nothing was changed; `GET /api/usage` shows usage and limits.",
}

INTRO = """\
# API reference

Generated from the OpenAPI document the service serves at `GET /openapi.json` (the same
document the interactive page at `GET /docs` shows) by `make docs`; do not edit it by hand.
A test fails when this file and the code disagree.

## Conventions

**Base URL.** Every path below is relative to the service's address: `http://127.0.0.1:5000`
under `make dev`, `https://<mail_hostname>` on a deployed host (nginx in front of the API
instances, see [deploy.md](deploy.md)).

**JSON.** Request bodies are JSON with `Content-Type: application/json`, validated strictly:
unknown fields are refused, types are not coerced (`"993"` is not `993`), strings may not
contain NUL. Responses are JSON unless an operation says otherwise. Timestamps are RFC 3339
strings in UTC with millisecond precision (`2026-02-03T09:00:00.000Z`). Ids are integers; a
path id of more than 19 digits matches no route (404).

**Authentication.** Every path under `/api/` needs `Authorization: Bearer <token>`. A token
comes from `POST /auth/login` (or `emailservice token` on the command line) and is valid for
`JWT_TTL_SECONDS` (3600 by default), as long as its user exists. The optional `X-Tenant-ID`
header, when sent, must name the token's tenant, otherwise the answer is 403; it never grants
anything by itself. Another tenant's resources do not exist for the caller: their ids are a
404, never a 403.

**Order of checks.** Token (401), `X-Tenant-ID` (403), rate limit (429), then whether the
resource exists in the caller's tenant (404), then the request body (413, 415, 400, 422).

**Pagination.** Lists answer `{"items": [...], "next_cursor": "..."}`. `limit` is 50 by
default; values above 500 count as 500. Pass the previous page's `next_cursor` as `cursor`
for the next page; `next_cursor` is `null` on the last one. Cursors are opaque and keyset
based: mail arriving between two requests causes no duplicate and no gap. Each list publishes
its cursor's exact pattern below; a cursor that does not match is a 422. Query parameters are
as strict as bodies: an unknown or repeated one is a 422.

**Rate limits.** Per tenant, shared by every API process (kept in Redis): a minute window
(`RATE_LIMIT_REQUESTS_PER_MINUTE`, 60 by default) and an hour window
(`RATE_LIMIT_REQUESTS_PER_HOUR`, 1000). Every authenticated `/api/` response carries
`X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the
minute window resets); over either limit the answer is 429 with `Retry-After` in seconds.
`POST /auth/login` is limited per client address instead (`LOGIN_RATE_LIMIT_PER_MINUTE`, 10).
`/health`, `/metrics`, `/openapi.json` and `/docs` are not limited. With Redis down, `/api/`
answers 503.

**Request ids.** Every response carries `X-Request-ID`: the caller's own, when it is a token
of up to 128 characters from `A-Z a-z 0-9 . _ : -`, otherwise a new one. The service's log
lines for the request carry the same id.

## Errors

Every error has one shape ([ErrorResponse](#errorresponse)):

```json
{"error": {"code": "validation_error", "message": "The request is invalid.",
           "details": [{"field": "imap.port", "message": "Input should be ... 65535"}]}}
```

`details` appears on 422 only, one entry per problem, `field` a dotted path into the body or
the name of a query parameter. `code` is stable; `message` is for people.
"""


def render(document: dict[str, Any], error_codes: list[tuple[int, str]]) -> str:
    """The Markdown reference for `document`; `error_codes` are the API's (status, code) pairs."""
    out = _Markdown()
    out.text(INTRO)
    _errors(out, document, error_codes)
    _operations(out, document)
    _schemas(out, document)
    return out.finish()


def error_codes() -> list[tuple[int, str]]:
    """(status, code) of every error the service reports, from its one error hierarchy."""
    from app.errors import ServiceError

    found, pending = set(), [ServiceError]
    while pending:
        cls = pending.pop()
        found.add((cls.status, cls.code))
        pending += cls.__subclasses__()
    return sorted(found)


def current_document() -> dict[str, Any]:
    """The document of an app built with placeholder settings (create_app connects to nothing)."""
    from app import create_app
    from app.api.openapi import build_document

    app = create_app(
        {
            "DATABASE_URL": "postgresql://docs@127.0.0.1:1/docs",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "JWT_SECRET": "x" * 32,
            "ENCRYPTION_KEY": "A" * 43 + "=",
        }
    )
    return build_document(app)


def heading_anchors(markdown: str) -> list[tuple[str, str]]:
    """(text, anchor) of each Markdown heading of `markdown`, in order, anchors as GitHub makes
    them (lower case, punctuation dropped, spaces to hyphens, repeats numbered)."""
    anchors: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    fence = None
    for line in markdown.splitlines():
        opening = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if opening:
            mark = opening.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        found = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence is None and found:
            anchors.append((found.group(1), _unique_slug(found.group(1), seen)))
    return anchors


def _unique_slug(text: str, seen: dict[str, int]) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


class _Markdown:
    """Lines of Markdown whose internal links are resolved to GitHub's anchors at the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, block: str) -> None:
        self.parts.append(block.rstrip("\n") + "\n")

    def finish(self) -> str:
        body = "\n".join(self.parts)
        anchors: dict[str, str] = {}
        for text, anchor in heading_anchors(body):
            anchors.setdefault(text, anchor)  # the first heading of that text
        return re.sub(r"\x00([^\x00]*)\x00", lambda m: "#" + anchors[m.group(1)], body)


def _link(text: str, heading: str) -> str:
    """A link to the heading whose text is `heading` (resolved in _Markdown.finish)."""
    return f"[{text}](\x00{heading}\x00)"


def _schema_link(name: str) -> str:
    return _link(name, name)


def _errors(out: _Markdown, document: dict[str, Any], codes: list[tuple[int, str]]) -> None:
    declared: dict[int, str] = {}
    for _path, _method, op in _all_operations(document):
        for status, response in sorted(op.get("responses", {}).items()):
            if _is_error_response(document, response):
                declared.setdefault(int(status), response.get("description", ""))
    rows = []
    for status, code in codes:
        meaning = (
            CODE_MEANINGS.get(code) or declared.get(status) or UNDECLARED_MEANINGS.get(status)
        )
        if meaning is None:
            meaning = http.HTTPStatus(status).phrase + "."
        rows.append([str(status), _code(code), _cell(meaning)])
    out.text(_table(["status", "code", "meaning"], rows))


def _is_error_response(document: dict[str, Any], response: dict[str, Any]) -> bool:
    for media in response.get("content", {}).values():
        ref = media.get("schema", {}).get("$ref", "")
        if ref and _resolve(document, ref).get("required") == ["error"]:
            return True
    return False


def _all_operations(document: dict[str, Any]):
    for path in sorted(document.get("paths", {})):
        item = document["paths"][path]
        for method in sorted(item, key=_method_order):
            if method in METHODS or method in ("head", "options", "trace"):
                yield path, method, item[method]


def _method_order(method: str) -> tuple[int, str]:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def _operations(out: _Markdown, document: dict[str, Any]) -> None:
    declared = [t["name"] for t in document.get("tags", [])]
    by_tag: dict[str, list] = {}
    for path, method, op in _all_operations(document):
        for tag in op.get("tags") or ["other"]:
            by_tag.setdefault(tag, []).append((path, method, op))
    order = [t for t in declared if t in by_tag] + sorted(t for t in by_tag if t not in declared)
    descriptions = {t["name"]: t.get("description", "") for t in document.get("tags", [])}

    contents = ["## Operations", ""]
    for tag in order:
        links = ", ".join(
            _link(f"{method.upper()} {path}", _operation_heading(path, method))
            for path, method, _ in by_tag[tag]
        )
        contents.append(f"- {_link(tag, tag)}: {links}")
    contents.append(f"- {_link('Schemas', 'Schemas')}")
    out.text("\n".join(contents))

    for tag in order:
        out.text(f"## {tag}")
        if descriptions.get(tag):
            out.text(_prose(descriptions[tag]))
        for path, method, op in by_tag[tag]:
            _operation(out, document, path, method, op)


def _operation_heading(path: str, method: str) -> str:
    return f"{method.upper()} {path}"


def _operation(out: _Markdown, document: dict[str, Any], path: str, method: str, op: dict) -> None:
    out.text(f"### {_operation_heading(path, method)}")
    lines = []
    for key in ("summary", "description"):
        if op.get(key):
            lines.append(_prose(op[key].rstrip(".") + "."))
    lines.append(f"Authentication: {_security(document, op)}.")
    if op.get("deprecated"):
        lines.append("**Deprecated.**")
    out.text("\n\n".join(lines))

    parameters = [_resolve_maybe(document, p) for p in op.get("parameters", [])]
    if parameters:
        rows, folds = [], _Folds()
        for p in parameters:
            schema = p.get("schema", {})
            rows.append(
                [
                    _code(p["name"]),
                    p["in"],
                    _type(schema),
                    "yes" if p.get("required") else "no",
                    _constraints(schema, p["name"], folds),
                    _cell(p.get("description") or schema.get("description", "")),
                ]
            )
        headers = ["parameter", "in", "type", "required", "constraints", "description"]
        out.text("**Parameters**\n\n" + _table(headers, rows) + folds.render())

    body = op.get("requestBody")
    if body:
        body = _resolve_maybe(document, body)
        for media, content in sorted(body.get("content", {}).items()):
            schema = content.get("schema", {})
            need = "required" if body.get("required") else "optional"
            out.text(f"**Request body** (`{media}`, {need}): {_type(schema)}")
            target = _resolve(document, schema["$ref"]) if "$ref" in schema else schema
            if target.get("properties"):
                out.text(_fields(target))

    rows = []
    for status, response in sorted(op.get("responses", {}).items()):
        response = _resolve_maybe(document, response)
        bodies = [
            f"{_type(c.get('schema', {}))} (`{media}`)"
            for media, c in sorted(response.get("content", {}).items())
        ]
        rows.append([status, _cell(response.get("description", "")), "; ".join(bodies) or "none"])
    if rows:
        out.text("**Responses**\n\n" + _table(["status", "description", "body"], rows))


def _security(document: dict[str, Any], op: dict) -> str:
    requirements = op.get("security", document.get("security", []))
    if not requirements:
        return "none"
    schemes = document.get("components", {}).get("securitySchemes", {})
    ways = []
    for requirement in requirements:
        names = []
        for name in sorted(requirement):
            scheme = schemes.get(name, {})
            if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer":
                names.append("`Authorization: Bearer <token>`")
            elif scheme.get("type") == "apiKey":
                names.append(f"`{scheme.get('name')}` ({scheme.get('in')})")
            else:
                names.append(f"`{name}`")
        ways.append(" and ".join(names) or "none")
    return " or ".join(ways) + "; `X-Tenant-ID` optional"


def _schemas(out: _Markdown, document: dict[str, Any]) -> None:
    out.text("## Schemas")
    out.text(
        "Objects marked *closed* refuse fields they do not list. In responses, *required* means "
        "the field is always present (possibly `null` where its type allows)."
    )
    schemas = document.get("components", {}).get("schemas", {})
    for name in sorted(schemas):
        schema = schemas[name]
        out.text(f"### {name}")
        if schema.get("description"):
            out.text(_prose(schema["description"]))
        if schema.get("type") == "object" or "properties" in schema:
            notes = []
            if schema.get("additionalProperties") is False:
                notes.append("*Closed* object.")
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                notes.append(f"Other keys map to {_type(extra)}.")
            notes += [
                f"{_code(field)} requires {', '.join(_code(d) for d in deps)}."
                for field, deps in sorted(schema.get("dependentRequired", {}).items())
            ]
            if notes:
                out.text(" ".join(notes))
            if schema.get("properties"):
                out.text(_fields(schema))
        else:
            folds = _Folds()
            constraints = _constraints(schema, name, folds)
            line = f"Type: {_type(schema)}" + (f"; {constraints}" if constraints else "") + "."
            out.text(line + folds.render())


def _fields(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", []))
    rows, folds = [], _Folds()
    for name, prop in schema["properties"].items():
        rows.append(
            [
                _code(name),
                _type(prop),
                "yes" if name in required else "no",
                _constraints(prop, name, folds),
                _cell(_description(prop)),
            ]
        )
    return _table(["field", "type", "required", "constraints", "description"], rows) + (
        folds.render()
    )


def _description(schema: dict[str, Any]) -> str:
    if schema.get("description"):
        return schema["description"]
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            if branch.get("description"):
                return branch["description"]
    items = schema.get("items")
    return items.get("description", "") if isinstance(items, dict) else ""


def _type(schema: dict[str, Any]) -> str:
    """A schema's type in words, with links to component schemas."""
    if "$ref" in schema:
        return _schema_link(schema["$ref"].rsplit("/", 1)[-1])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [_type(b) for b in schema[key]]
            ordered = [b for b in branches if b != "null"] + [b for b in branches if b == "null"]
            return " or ".join(dict.fromkeys(ordered))
    if "allOf" in schema:
        return " and ".join(_type(b) for b in schema["allOf"])
    if "const" in schema:
        return f"constant {_code(json.dumps(schema['const'], ensure_ascii=False))}"
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(_type({**schema, "type": k}) for k in kind)
    if kind == "array":
        if "prefixItems" in schema:
            return "array [" + ", ".join(_type(i) for i in schema["prefixItems"]) + "]"
        items = schema.get("items")
        return f"array of {_type(items)}" if isinstance(items, dict) and items else "array"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])} values"
    if kind is None:
        return "any"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(schema: dict[str, Any], name: str, folds: _Folds, each: bool = False) -> str:
    parts: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            if branch.get("type") != "null" and "$ref" not in branch:
                found = _constraints(branch, name, folds, each)
                if found:
                    parts.append(found)
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(_value(v)) for v in schema["enum"]))
    parts += _range(schema, "minLength", "maxLength", "characters")
    parts += _range(schema, "minimum", "maximum", "")
    parts += _range(schema, "minItems", "maxItems", "items")
    if "exclusiveMinimum" in schema:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {schema['exclusiveMaximum']}")
    if "multipleOf" in schema:
        parts.append(f"multiple of {schema['multipleOf']}")
    if schema.get("uniqueItems"):
        parts.append("no duplicates")
    if "pattern" in schema:
        pattern = schema["pattern"]
        if len(pattern) > LONG_PATTERN:
            parts.append(f"pattern {folds.add(pattern, name, each)}")
        else:
            parts.append(f"pattern {_code(pattern)}")
    items = schema.get("items")
    if isinstance(items, dict) and "$ref" not in items:
        found = _constraints(items, name, folds, each=True)
        if found:
            parts.append(f"each item: {found}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and "$ref" not in extra:
        found = _constraints(extra, name, folds, each=True)
        if found:
            parts.append(f"each value: {found}")
    if "default" in schema:
        parts.append(f"default {_code(_value(schema['default']))}")
    return "; ".join(parts)


def _value(value: Any) -> str:
    """A value as it is written in JSON, strings without their quotes."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _range(schema: dict[str, Any], low_key: str, high_key: str, unit: str) -> list[str]:
    low, high = schema.get(low_key), schema.get(high_key)
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return [f"{low}–{high}{suffix}"]
    if low is not None:
        return [f"at least {low}{suffix}"]
    if high is not None:
        return [f"at most {high}{suffix}"]
    return []


class _Folds:
    """Patterns too long for a table cell, shown once each below the table."""

    def __init__(self) -> None:
        self.patterns: dict[str, list[str]] = {}

    def add(self, pattern: str, name: str, each: bool) -> str:
        self.patterns.setdefault(pattern, []).append(name + (" (each)" if each else ""))
        number = list(self.patterns).index(pattern) + 1
        return f"(long: pattern {number} below)"

    def render(self) -> str:
        blocks = []
        for number, (pattern, names) in enumerate(self.patterns.items(), 1):
            fence = "`" * max(3, _longest_run(pattern, "`") + 1)
            owners = ", ".join(f"<code>{_html(n)}</code>" for n in dict.fromkeys(names))
            blocks.append(
                f"<details><summary>Pattern {number}: {owners}</summary>\n\n"
                f"{fence}text\n{pattern}\n{fence}\n\n</details>"
            )
        return "".join("\n\n" + b for b in blocks)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    """`text` as an inline code span, safe inside a table cell."""
    fence = "`" * (_longest_run(text, "`") + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def _cell(text: str) -> str:
    """Prose for a table cell: one line, pipes escaped."""
    return _prose(" ".join(text.split())).replace("|", "\\|")


def _prose(text: str) -> str:
    """Markdown prose from a description: `<` and `&` outside code spans shown literally."""
    pieces = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else _html(p) for p in pieces)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _longest_run(text: str, char: str) -> int:
    return max((len(m) for m in re.findall(f"{re.escape(char)}+", text)), default=0)


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _resolve_maybe(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    return _resolve(document, node["$ref"]) if "$ref" in node else node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/api.md is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script: the repository's app/, not another
    text = render(current_document(), error_codes())
    if args.check:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text:
            print("docs/api.md is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
