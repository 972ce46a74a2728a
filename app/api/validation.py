"""Request bodies and query parameters in, validated models out; every failure a 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from app.errors import BadRequest, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)
# Deepest nesting of arrays and objects a body may have. The deepest request of the API is a
# few levels deep; a body of 100,000 "[" would otherwise reach the recursion limit of the JSON
# decoder (and of every recursive walk after it).
MAX_JSON_DEPTH = 32


def parse_body(model: type[M], *, optional: bool = False) -> M:
    """The JSON body validated against `model`.

    Order: 415 when it is not JSON, 400 when it does not parse or nests deeper than
    MAX_JSON_DEPTH, 422 naming each bad field.
    With `optional`, an empty body (with or without Content-Type) means the model's defaults.
    """
    raw = request.get_data(cache=True)  # past MAX_CONTENT_LENGTH this raises 413
    if optional and not raw.strip():
        return model()
    if not request.is_json:
        raise UnsupportedMediaType(
            "The request body must be JSON (Content-Type: application/json)."
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:  # nested deeper than the decoder can recurse
        raise _too_deep_error() from None
    if _too_deep(data):
        raise _too_deep_error()
    problems = [
        {"field": field, "message": "contains a NUL character or an unpaired surrogate"}
        for field in _unstorable_strings(data, ())
    ]
    if problems:
        raise ValidationFailed("The request is invalid.", problems)
    return validate(model, data)


def _too_deep_error() -> BadRequest:
    return BadRequest(f"The request body is nested deeper than {MAX_JSON_DEPTH} levels.")


def _too_deep(value: object) -> bool:
    """Whether arrays and objects nest deeper than MAX_JSON_DEPTH (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _unstorable_strings(value: object, path: tuple[str | int, ...]) -> Iterator[str]:
    """Paths of strings PostgreSQL cannot store: NUL, or lone surrogates JSON can escape."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            yield ".".join(map(str, path)) or "body"
            return
        if "\x00" in value:
            yield ".".join(map(str, path)) or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unstorable_strings(key, path)
            yield from _unstorable_strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unstorable_strings(item, (*path, index))


def parse_query(model: type[M]) -> M:
    """The query string validated against `model` (documented in OpenAPI as its parameters).

    As strict about names as bodies are (an unknown or repeated parameter is a 422), and as lax
    about types as a query string must be ("20" is the integer 20).
    """
    repeated = [name for name in request.args if len(request.args.getlist(name)) > 1]
    if repeated:
        raise ValidationFailed(
            "The request is invalid.",
            [{"field": name, "message": "given more than once"} for name in repeated],
        )
    return validate(model, request.args.to_dict())


def validate(model: type[M], data: object) -> M:
    """`data` validated against `model`, or ValidationFailed with one detail per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "body",
                "message": error["msg"],
            }
            for error in exc.errors(include_url=False)
        ]
        raise ValidationFailed("The request is invalid.", details) from None
