"""Passwords, logins and access tokens.

Passwords are hashed with argon2id (argon2-cffi): salted, memory-hard, parameters stored in the
hash so they can be raised later (`check_needs_rehash`). Tokens are HS256 JWTs whose subject is
the user's id, so a deleted and re-created user does not inherit old tokens.

Each API process remembers whom a token's (user, tenant) pair stood for (`PrincipalCache`),
so a request does not ask PostgreSQL again. What keeps that exact: every tenant has a
revocation generation in Redis (`generation_key`), a random value replaced whenever one of
its users loses access (`revoke_tokens`: today, a user deleted), and a remembered pair is
used only while the generation it was looked up under is still the tenant's current one.
Every request reads the generation in the same Redis round trip as its rate limit
(app.api.ratelimit), so a deleted user is refused on their next request on every process.
A request that cannot read it (Redis down) looks the user up in PostgreSQL.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select

from app.config import Settings
from app.context import REDIS_ERRORS, ServiceContext, Unit
from app.errors import RateLimited, Unauthorized, Unavailable
from app.models import Tenant, User

ALGORITHM = "HS256"
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong username costs as much time as a
# wrong password and timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")
# Password hashes one process computes at once. Each argon2id verification takes 64 MiB and
# a few tens of milliseconds of CPU: without a cap, parallel logins (rate limits count them,
# but do not stop them arriving together) queue hashes that eat the API's memory and threads.
# Past the cap a login is refused at once (429), never queued.
MAX_CONCURRENT_HASHES = 2
HASH_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)


class HashesBusy(RateLimited):
    """Every password-hash slot of this process is taken: try again in a moment."""


@contextmanager
def _hash_slot() -> Iterator[None]:
    if not HASH_SLOTS.acquire(blocking=False):
        # A hash takes far less than the second the client is asked to wait.
        raise HashesBusy("Too many logins at once; retry in a second.", retry_after=1)
    try:
        yield
    finally:
        HASH_SLOTS.release()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: int
    tenant_id: int
    tenant_slug: str
    username: str


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_in: int  # seconds


def login(unit: Unit, tenant_slug: str, username: str, password: str) -> Token:
    """An access token for valid credentials; Unauthorized, saying nothing of which part was
    wrong; HashesBusy when MAX_CONCURRENT_HASHES logins of this process are hashing already."""
    row = unit.session.execute(
        select(User, Tenant)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(Tenant.slug == tenant_slug, User.username == username)
    ).first()
    with _hash_slot():
        if row is None:
            verify_password(_DUMMY_HASH, password)
            raise Unauthorized("Invalid credentials.")
        user, tenant = row
        if not verify_password(user.password_hash, password):
            raise Unauthorized("Invalid credentials.")
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
            unit.commit()
    settings = unit.ctx.settings
    principal = Principal(user.id, tenant.id, tenant.slug, user.username)
    return Token(issue_token(settings, principal), settings.jwt_ttl_seconds)


def issue_token(settings: Settings, principal: Principal) -> str:
    """A signed access token for `principal`, valid for JWT_TTL_SECONDS."""
    now = int(time.time())
    claims = {
        "sub": str(principal.user_id),
        "tenant": principal.tenant_slug,
        "iat": now,
        "exp": now + settings.jwt_ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who, in which tenant (still to be checked against the
    database)."""

    user_id: int
    tenant_slug: str


def read_token(settings: Settings, token: str) -> TokenClaims:
    """The claims of a token with a valid signature and expiry, or Unauthorized.

    Only HS256 is accepted (never `none`, never an algorithm named by the token) and every
    claim is required.
    """
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "tenant", "iat", "exp", "jti"]},
        )
        user_id = int(claims["sub"])
        if not isinstance(claims["tenant"], str):
            raise ValueError("tenant claim")
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthorized("Invalid or expired token.") from None
    return TokenClaims(user_id, claims["tenant"])


def find_principal(unit: Unit, claims: TokenClaims) -> Principal:
    """The principal of verified claims: the user must still exist in the token's tenant."""
    row = unit.session.execute(
        select(User.id, User.username, Tenant.id.label("tenant_id"), Tenant.slug)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(User.id == claims.user_id, Tenant.slug == claims.tenant_slug)
    ).first()
    if row is None:
        raise Unauthorized("Invalid or expired token.")
    return Principal(row.id, row.tenant_id, row.slug, row.username)


def authenticate(unit: Unit, token: str) -> Principal:
    """The principal a bearer token stands for, or Unauthorized (always asks the database)."""
    return find_principal(unit, read_token(unit.ctx.settings, token))


# -- revocation and the per-process cache ----------------------------------------------------

GENERATION_PREFIX = "emailservice:auth-generation:"
# How long a process may use a principal it looked up, whatever the generation says: the
# bound for the one case a generation cannot cover (Redis stops answering between a user's
# deletion and the generation's second replacement, app.services.tenants.delete_user).
CACHE_SECONDS = 60


def generation_key(tenant_slug: str) -> str:
    """The Redis key of a tenant's revocation generation."""
    return GENERATION_PREFIX + tenant_slug


def new_generation() -> str:
    """A fresh generation: random, so one never comes back (not even after Redis lost its
    data and a key was created anew)."""
    return secrets.token_hex(8)


def revoke_tokens(ctx: ServiceContext, tenant_slug: str) -> None:
    """Make every process look the tenant's tokens up in the database again on their next
    use; Unavailable when Redis does not answer."""
    try:
        ctx.redis.set(generation_key(tenant_slug), new_generation())
    except REDIS_ERRORS:
        raise Unavailable("Redis is unavailable: access was not revoked; try again.") from None


class PrincipalCache:
    """Principals this process looked up, each with the tenant generation it was read under.

    A hit needs the caller to have just read the tenant's current generation (the caller
    compares); entries also expire after `ttl` seconds, and past `max_entries` the cache
    starts over, so its memory is bounded whatever the tokens presented.
    """

    def __init__(self, ttl: float = CACHE_SECONDS, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[TokenClaims, tuple[Principal, str, float]] = {}

    def get(self, claims: TokenClaims) -> tuple[Principal, str] | None:
        """(principal, generation it was read under), unless absent or expired."""
        entry = self._entries.get(claims)
        if entry is None:
            return None
        principal, generation, expires = entry
        if time.monotonic() >= expires:
            self._entries.pop(claims, None)
            return None
        return principal, generation

    def put(self, claims: TokenClaims, principal: Principal, generation: str) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[claims] = (principal, generation, time.monotonic() + self.ttl)
