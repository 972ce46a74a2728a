"""Tenants and users: created and removed by the operator's CLI."""

from __future__ import annotations

import re

from sqlalchemy import select

from app.context import Unit
from app.errors import Conflict, NotFound, Unavailable, ValidationFailed
from app.models import Tenant, User
from app.services.auth import (
    CACHE_SECONDS,
    Principal,
    hash_password,
    issue_token,
    revoke_tokens,
)

SLUG_RE = re.compile(r"^[a-z0-9-]{1,63}$")
USERNAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,150}$")
MIN_PASSWORD_LENGTH = 8


def create_tenant(unit: Unit, slug: str) -> Tenant:
    if not SLUG_RE.match(slug):
        raise ValidationFailed(f"Tenant name {slug!r} must match [a-z0-9-]{{1,63}}.")
    if unit.session.scalar(select(Tenant).where(Tenant.slug == slug)) is not None:
        raise Conflict(f"Tenant {slug!r} already exists.")
    tenant = Tenant(slug=slug)
    unit.session.add(tenant)
    unit.commit()
    return tenant


def get_tenant(unit: Unit, slug: str) -> Tenant:
    tenant = unit.session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"Tenant {slug!r} does not exist.")
    return tenant


def create_user(unit: Unit, tenant_slug: str, username: str, password: str) -> User:
    tenant = get_tenant(unit, tenant_slug)
    if not USERNAME_RE.match(username):
        raise ValidationFailed(f"Username {username!r} must be 1-150 characters without spaces.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"Password must be at least {MIN_PASSWORD_LENGTH} characters.")
    if _find_user(unit, tenant, username) is not None:
        raise Conflict(f"User {username!r} already exists in tenant {tenant_slug!r}.")
    user = User(tenant_id=tenant.id, username=username, password_hash=hash_password(password))
    unit.session.add(user)
    unit.commit()
    return user


def _find_user(unit: Unit, tenant: Tenant, username: str) -> User | None:
    return unit.session.scalar(
        select(User).where(User.tenant_id == tenant.id, User.username == username)
    )


def get_user(unit: Unit, tenant_slug: str, username: str) -> User:
    tenant = get_tenant(unit, tenant_slug)
    user = _find_user(unit, tenant, username)
    if user is None:
        raise NotFound(f"User {username!r} does not exist in tenant {tenant_slug!r}.")
    return user


def delete_user(unit: Unit, tenant_slug: str, username: str) -> None:
    """Delete a user; their tokens are refused from the next request on, on every API process.

    The tenant's revocation generation is replaced before the commit (when Redis does not
    answer, nothing is deleted) and again after it: the first invalidates what every process
    remembers, the second what a request may have looked up between the two.
    """
    user = get_user(unit, tenant_slug, username)
    revoke_tokens(unit.ctx, tenant_slug)
    unit.session.delete(user)
    unit.commit()
    try:
        revoke_tokens(unit.ctx, tenant_slug)
    except Unavailable:
        raise Unavailable(
            f"User {username!r} deleted, but Redis stopped answering: an API process may "
            f"still accept their token for up to {CACHE_SECONDS} s."
        ) from None


def user_token(unit: Unit, tenant_slug: str, username: str) -> str:
    """An access token for a user (the CLI's `token`, for scripts and first steps)."""
    tenant = get_tenant(unit, tenant_slug)
    user = get_user(unit, tenant_slug, username)
    return issue_token(unit.ctx.settings, Principal(user.id, tenant.id, tenant.slug, user.username))
