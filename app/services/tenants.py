"""Tenants and users: created and removed by the operator's CLI."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, NotFound, ValidationFailed
from app.models import Tenant, User
from app.services.auth import hash_password

SLUG_RE = re.compile(r"^[a-z0-9-]{1,63}$")
USERNAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,150}$")
MIN_PASSWORD_LENGTH = 8


def create_tenant(session: Session, slug: str) -> Tenant:
    if not SLUG_RE.match(slug):
        raise ValidationFailed(f"Tenant name {slug!r} must match [a-z0-9-]{{1,63}}.")
    if session.scalar(select(Tenant).where(Tenant.slug == slug)) is not None:
        raise Conflict(f"Tenant {slug!r} already exists.")
    tenant = Tenant(slug=slug)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, slug: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"Tenant {slug!r} does not exist.")
    return tenant


def create_user(session: Session, tenant_slug: str, username: str, password: str) -> User:
    tenant = get_tenant(session, tenant_slug)
    if not USERNAME_RE.match(username):
        raise ValidationFailed(f"Username {username!r} must be 1-150 characters without spaces.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"Password must be at least {MIN_PASSWORD_LENGTH} characters.")
    if find_user(session, tenant, username) is not None:
        raise Conflict(f"User {username!r} already exists in tenant {tenant_slug!r}.")
    user = User(tenant_id=tenant.id, username=username, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, tenant: Tenant, username: str) -> User | None:
    return session.scalar(
        select(User).where(User.tenant_id == tenant.id, User.username == username)
    )


def get_user(session: Session, tenant_slug: str, username: str) -> User:
    tenant = get_tenant(session, tenant_slug)
    user = find_user(session, tenant, username)
    if user is None:
        raise NotFound(f"User {username!r} does not exist in tenant {tenant_slug!r}.")
    return user


def delete_user(session: Session, tenant_slug: str, username: str) -> None:
    session.delete(get_user(session, tenant_slug, username))
    session.flush()
