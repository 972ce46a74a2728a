"""Where a request meets the services: the process's service context and the request's unit
of work (opened on first use, closed when the request ends), and responses from schemas."""

from __future__ import annotations

from flask import Flask, Response, current_app, g
from pydantic import BaseModel

from app.context import ServiceContext, Unit


def init_app(app: Flask, ctx: ServiceContext) -> None:
    app.extensions["context"] = ctx

    @app.after_request
    def never_sniff(response: Response) -> Response:
        # Every response declares its type, and a browser must believe it: mail bytes served
        # as message/rfc822 or an attachment's own type never get sniffed into HTML or script
        # of the service's origin.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.teardown_appcontext
    def close_unit(exc: BaseException | None) -> None:
        unit: Unit | None = g.pop("unit", None)
        if unit is not None:
            # Services commit what they finish; anything else is rolled back here.
            unit.close()


def context() -> ServiceContext:
    """The service context of this process."""
    ctx: ServiceContext = current_app.extensions["context"]
    return ctx


def unit() -> Unit:
    """This request's unit of work (tenant-bound once the caller is authenticated)."""
    if "unit" not in g:
        g.unit = context().unit()
    current: Unit = g.unit
    return current


def respond(body: BaseModel, status: int = 200, *, location: str | None = None) -> Response:
    """`body` as the JSON response (field names as the schema publishes them), serialised by
    pydantic's own encoder: a page of 50 summaries through a dict and the json module cost
    more than reading them from the database."""
    response = Response(body.model_dump_json(by_alias=True), status, mimetype="application/json")
    if location is not None:
        response.headers["Location"] = location
    return response
