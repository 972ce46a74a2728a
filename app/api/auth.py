"""POST /auth/login, and the authentication every /api/ request passes first.

Order of checks: token (401), X-Tenant-ID (403), rate limit (429), then the route's own
existence (404) and body (400/415/422) checks.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from app.api import ratelimit
from app.api.edge import respond, unit
from app.api.openapi import operation
from app.api.validation import parse_body
from app.errors import Forbidden, Unauthorized
from app.schemas.auth import LoginIn, TokenOut
from app.schemas.errors import ErrorResponse
from app.services import auth

bp = Blueprint("auth", __name__)


@bp.post("/auth/login")
@operation(
    "Exchange a tenant user's credentials for an access token",
    tags=("auth",),
    request=LoginIn,
    responses={
        200: ("A bearer token.", TokenOut),
        401: ("Invalid credentials (which part was wrong is not said).", ErrorResponse),
    },
    errors=(429,),
    auth=False,
)
def login() -> Response:
    ratelimit.limit_login(request.remote_addr or "unknown")
    body = parse_body(LoginIn)
    ratelimit.limit_login_user(body.tenant, body.username)
    token = auth.login(unit(), body.tenant, body.username, body.password)
    return respond(
        TokenOut(access_token=token.access_token, token_type="Bearer", expires_in=token.expires_in)
    )


def init_app(app: Flask) -> None:
    """Authenticate every /api/ request before anything else looks at it."""

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/api/"):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("A bearer token is required (Authorization: Bearer <token>).")
        principal = auth.authenticate(unit(), token.strip())
        claimed = request.headers.get("X-Tenant-ID")
        if claimed is not None and claimed != principal.tenant_slug:
            raise Forbidden("X-Tenant-ID does not match the token's tenant.")
        # From here on every query of this request sees only this tenant's rows.
        unit().bind_tenant(principal.tenant_id)
        ratelimit.limit_tenant(principal.tenant_slug)

    app.register_blueprint(bp)
