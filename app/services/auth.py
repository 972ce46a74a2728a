"""Passwords, logins and access tokens.

Passwords are hashed with argon2id (argon2-cffi): salted, memory-hard, parameters stored in the
hash so they can be raised later (`check_needs_rehash`). Tokens are HS256 JWTs whose subject is
the user's id, so a deleted and re-created user does not inherit old tokens.
"""

from __future__ import annotations

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
from app.context import Unit
from app.errors import RateLimited, Unauthorized
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


def authenticate(unit: Unit, token: str) -> Principal:
    """The principal a bearer token stands for, or Unauthorized.

    Only HS256 is accepted (never `none`, never an algorithm named by the token), every claim
    is required, and the user must still exist in the token's tenant.
    """
    settings = unit.ctx.settings
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
    row = unit.session.execute(
        select(User, Tenant)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(User.id == user_id, Tenant.slug == claims["tenant"])
    ).first()
    if row is None:
        raise Unauthorized("Invalid or expired token.")
    user, tenant = row
    return Principal(user.id, tenant.id, tenant.slug, user.username)
