"""POST /auth/login, and the authentication every /api/ request passes first.

Order of checks: token (401), X-Tenant-ID (403), rate limit (429), then the route's own
existence (404) and body (400/415/422) checks.

A token's user and tenant are looked up in PostgreSQL once per process and then remembered
(app.services.auth.PrincipalCache) for as long as the tenant's revocation generation, read
in the rate limit's Redis round trip, stays the one they were looked up under.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

from app.api import ratelimit
from app.api.edge import context, respond, unit
from app.api.openapi import operation
from app.api.validation import parse_body
from app.context import REDIS_ERRORS
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
    app.extensions["auth.principals"] = auth.PrincipalCache()

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/api/"):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("A bearer token is required (Authorization: Bearer <token>).")
        claims = auth.read_token(context().settings, token.strip())
        claimed = request.headers.get("X-Tenant-ID")
        if claimed is not None and claimed != claims.tenant_slug:
            auth.find_principal(unit(), claims)  # a token of a deleted user is still a 401
            raise Forbidden("X-Tenant-ID does not match the token's tenant.")
        principal = _principal_counted(claims)
        # From here on every query of this request sees only this tenant's rows.
        unit().bind_tenant(principal.tenant_id)

    app.register_blueprint(bp)


def _principal_counted(claims: auth.TokenClaims) -> auth.Principal:
    """The principal of `claims`, with the request counted against the tenant's rate limit
    (RateLimited past it). Usually one Redis round trip and no query."""
    principals: auth.PrincipalCache = current_app.extensions["auth.principals"]
    slug = claims.tenant_slug
    cached = principals.get(claims)
    try:
        count = ratelimit.count_tenant(slug, cached[1] if cached else None, always=False)
    except REDIS_ERRORS:
        # The generation cannot be read, so nothing remembered may be trusted: the database
        # decides (401 for a deleted user); then the rate limit's outage (503) as before.
        auth.find_principal(unit(), claims)
        raise
    if cached is not None and count.counted:
        principal = cached[0]
    else:
        # Not remembered, or revoked since: ask the database under the generation just read
        # (a deletion replaces the generation after its commit, so a lookup that raced it is
        # remembered under a generation that is already stale).
        principal = auth.find_principal(unit(), claims)
        principals.put(claims, principal, count.generation)
        if not count.counted:
            count = ratelimit.count_tenant(slug, None, always=True)
    ratelimit.enforce_tenant(count)
    return principal
