"""Tenant isolation, applied in one place for every query.

A session bound to a tenant (`bind_tenant`) adds `tenant_id = <that tenant>` to every ORM
SELECT, UPDATE and DELETE of every `TenantScoped` model, including `session.get()` and
relationship loads, and refuses to flush a row of another tenant. Routes therefore cannot
forget the filter: another tenant's id simply finds nothing (a 404, never a 403). Sessions not
bound to a tenant (workers, CLI) see everything, as system code must.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ForeignKey, event
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    UOWTransaction,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)

TENANT_KEY = "tenant_id"


class CrossTenantWrite(Exception):
    """A tenant-bound session tried to write a row of another tenant (a bug, never user input)."""


class TenantScoped:
    """Mixin for models whose rows belong to one tenant."""

    @declared_attr
    def tenant_id(cls) -> Mapped[int]:
        return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


def bind_tenant(session: Session, tenant_id: int) -> Session:
    """Restrict `session` to one tenant's rows from now on."""
    session.info[TENANT_KEY] = tenant_id
    return session


def bound_tenant(session: Session) -> int | None:
    """The tenant a session is bound to, if any."""
    return session.info.get(TENANT_KEY)


@event.listens_for(Session, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    tenant_id = state.session.info.get(TENANT_KEY)
    if tenant_id is None or state.is_column_load:
        return
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(
            with_loader_criteria(
                TenantScoped,
                lambda cls: cls.tenant_id == tenant_id,
                # tenant_id is a closure variable: SQLAlchemy turns it into a bound
                # parameter, so the cached statement is reused for every tenant safely.
                include_aliases=True,
            )
        )


@event.listens_for(Session, "before_flush")
def _stamp_tenant(
    session: Session, flush_context: UOWTransaction, instances: Sequence[object] | None
) -> None:
    tenant_id = session.info.get(TENANT_KEY)
    if tenant_id is None:
        return
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        if isinstance(obj, TenantScoped):
            if obj.tenant_id is None:
                obj.tenant_id = tenant_id
            elif obj.tenant_id != tenant_id:
                raise CrossTenantWrite(f"{type(obj).__name__} of tenant {obj.tenant_id}")
