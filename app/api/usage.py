"""/api/usage: what the caller's tenant uses against its limits."""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.edge import respond, unit
from app.api.openapi import operation
from app.schemas.usage import UsageOut
from app.services import usage

bp = Blueprint("usage", __name__, url_prefix="/api/usage")


@bp.get("")
@operation(
    "The tenant's accounts and stored bytes, and its limits",
    tags=("usage",),
    responses={200: ("Usage and limits of the caller's tenant.", UsageOut)},
)
def get_usage() -> Response:
    return respond(UsageOut.of(usage.usage(unit())))
