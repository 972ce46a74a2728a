"""POST /auth/login, and the authentication every /api/ request passes first.

Order of checks (shared/API.md): token (401), X-Tenant-ID (403), rate limit (429), then the
route's own existence (404) and body (400/415/422) checks.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, g, jsonify, request

from app.api import ratelimit
from app.api.openapi import operation
from app.api.validation import parse_body
from app.db import get_session
from app.errors import Forbidden, Unauthorized
from app.schemas.auth import LoginIn, TokenOut
from app.services import auth
from app.tenancy import bind_tenant

bp = Blueprint("auth", __name__)


@bp.post("/auth/login")
@operation(
    "Exchange a tenant user's credentials for an access token",
    tags=("auth",),
    request=LoginIn,
    responses={200: ("A bearer token.", TokenOut)},
    errors=(401, 429),
    auth=False,
)
def login():
    settings = current_app.config["SETTINGS"]
    ratelimit.limit_login(request.remote_addr or "unknown")
    body = parse_body(LoginIn)
    session = get_session()
    principal = auth.login(session, body.tenant, body.username, body.password)
    session.commit()  # a rehashed password, if its parameters were raised
    token = auth.issue_token(settings, principal)
    return jsonify(
        TokenOut(
            access_token=token, token_type="Bearer", expires_in=settings.jwt_ttl_seconds
        ).model_dump()
    )


def current_principal() -> auth.Principal:
    """The caller of the current /api/ request."""
    return g.principal


def init_app(app: Flask) -> None:
    """Authenticate every /api/ request before anything else looks at it."""

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/api/"):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("A bearer token is required (Authorization: Bearer <token>).")
        session = get_session()
        principal = auth.authenticate(session, app.config["SETTINGS"], token.strip())
        claimed = request.headers.get("X-Tenant-ID")
        if claimed is not None and claimed != principal.tenant_slug:
            raise Forbidden("X-Tenant-ID does not match the token's tenant.")
        g.principal = principal
        # From here on every query of this request sees only this tenant's rows.
        bind_tenant(session, principal.tenant_id)
        ratelimit.limit_tenant(principal.tenant_slug)

    app.register_blueprint(bp)
