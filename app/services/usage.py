"""What a tenant uses against its limits: accounts, stored bytes, and the checks at each limit.

Stored bytes are a running total that PostgreSQL keeps itself (the triggers of migration 0009
on message_raws, drafts and outbox; app.models.TenantUsage), so reading it is one row, cheap
enough for every draft save and for the sync once per batch. `recount` is the slow full sum,
for tests and for checking the total by hand.

The checks that guard a limit lock the tenant first, so two requests at the limit cannot both
pass: accounts under the tenant row (FOR NO KEY UPDATE, which still lets rows of the tenant be
inserted meanwhile), storage under the tenant's usage row, which every change of stored bytes
updates anyway. A send checks after its write instead (check_stored): the outbox INSERT's
trigger locks the usage row itself, so a lock taken before it would only be held longer.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, union_all
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.config import Settings
from app.context import ServiceContext, Unit
from app.errors import QuotaExceeded
from app.jobs import Owner
from app.models import Account, Draft, MessageRaw, OutboxEntry, Tenant, TenantUsage
from app.tenancy import bound_tenant


@dataclass(frozen=True)
class Limits:
    accounts: int
    storage_bytes: int
    concurrent_jobs: int
    verify_in_flight: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            accounts=settings.tenant_max_accounts,
            storage_bytes=settings.tenant_max_storage_bytes,
            concurrent_jobs=settings.tenant_max_concurrent_jobs,
            verify_in_flight=settings.verify_max_in_flight,
        )


@dataclass(frozen=True)
class Usage:
    accounts: int
    storage_bytes: int
    limits: Limits


def _tenant(unit: Unit) -> int:
    tenant_id = bound_tenant(unit.session)
    if tenant_id is None:
        raise RuntimeError("usage needs a unit bound to a tenant")
    return tenant_id


def storage_bytes(session: Session, tenant_id: int, *, lock: bool = False) -> int:
    """The tenant's stored bytes (the running total); with `lock`, its row stays locked until
    the transaction ends, so a check and the write it allows are one step."""
    if lock:
        # The row must exist to be locked: a tenant that never stored anything has none yet.
        session.execute(
            insert(TenantUsage)
            .values(tenant_id=tenant_id, storage_bytes=0)
            .on_conflict_do_nothing(index_elements=["tenant_id"])
        )
    query = select(TenantUsage.storage_bytes).where(TenantUsage.tenant_id == tenant_id)
    return session.scalar(query.with_for_update() if lock else query) or 0


def account_count(session: Session, tenant_id: int) -> int:
    return session.scalar(select(func.count()).where(Account.tenant_id == tenant_id)) or 0


def usage(unit: Unit) -> Usage:
    """The caller's tenant's usage and limits (GET /api/usage)."""
    tenant_id = _tenant(unit)
    return Usage(
        accounts=account_count(unit.session, tenant_id),
        storage_bytes=storage_bytes(unit.session, tenant_id),
        limits=Limits.of(unit.ctx.settings),
    )


def over_quota(session: Session, settings: Settings, tenant_id: int) -> bool:
    """Whether the tenant has reached its storage quota: new mail is then stored with its
    headers only (`over_quota`). One primary-key read: the sync asks once per batch."""
    return storage_bytes(session, tenant_id) >= settings.tenant_max_storage_bytes


def claim_account(unit: Unit, *, lock: bool = True) -> None:
    """Raise QuotaExceeded when the tenant has TENANT_MAX_ACCOUNTS accounts already; else,
    with `lock`, the tenant stays locked for account creation until the unit commits (call it
    right before adding the account, after any slow verification). Without `lock`: an early
    refusal, before spending a verification on an account that could not be added."""
    tenant_id, limit = _tenant(unit), unit.ctx.settings.tenant_max_accounts
    if lock:
        unit.session.execute(
            select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
        )
    count = account_count(unit.session, tenant_id)
    if count >= limit:
        raise QuotaExceeded(
            f"The tenant has {count} mail accounts; the limit is {limit} (TENANT_MAX_ACCOUNTS)."
        )


def claim_storage(unit: Unit, added: int, what: str) -> None:
    """Raise QuotaExceeded when storing `added` more bytes would pass the tenant's storage
    quota; else the tenant's usage row stays locked until the unit commits. Storing less
    (`added` <= 0: a smaller draft) is always allowed: it brings a tenant back under."""
    if added <= 0:
        return
    tenant_id, limit = _tenant(unit), unit.ctx.settings.tenant_max_storage_bytes
    used = storage_bytes(unit.session, tenant_id, lock=True)
    if used + added > limit:
        raise QuotaExceeded(
            f"{what} would store {added} more bytes; the tenant stores {used} of "
            f"{limit} (TENANT_MAX_STORAGE_BYTES). Delete mail or drafts to make room."
        )


def check_stored(unit: Unit, added: int, what: str) -> None:
    """Raise QuotaExceeded when the tenant's stored bytes, `added` of them just written in
    this unit (flushed), pass its storage quota; the unit must then roll back.

    For a write whose trigger updates the tenant's usage row anyway (an outbox INSERT): that
    UPDATE holds the row locked until the unit ends, so the total read here is exact (every
    other writer of the tenant waits for this unit, and this unit's own bytes are in it) with
    no lock taken before the write, and the row is held over this one read and the commit
    only. claim_storage, which locks the row before the write, holds it over the write too."""
    if added <= 0:
        return
    tenant_id, limit = _tenant(unit), unit.ctx.settings.tenant_max_storage_bytes
    total = storage_bytes(unit.session, tenant_id)
    if total > limit:
        raise QuotaExceeded(
            f"{what} would store {added} more bytes; the tenant stores {total - added} of "
            f"{limit} (TENANT_MAX_STORAGE_BYTES). Delete mail or drafts to make room."
        )


def recount(session: Session, tenant_id: int) -> int:
    """The tenant's stored bytes summed over every row (slow: a check of the running total)."""
    parts = union_all(
        select(func.octet_length(MessageRaw.data).label("n")).where(
            MessageRaw.tenant_id == tenant_id
        ),
        select(Draft.size.label("n")).where(Draft.tenant_id == tenant_id),
        select(func.octet_length(OutboxEntry.mime).label("n")).where(
            OutboxEntry.tenant_id == tenant_id
        ),
    ).subquery()
    return int(session.scalar(select(func.coalesce(func.sum(parts.c.n), 0))) or 0)


def job_tenant(ctx: ServiceContext, owner: Owner, object_id: int) -> int | None:
    """The tenant whose account or outbox entry a job works on (what the job's first argument
    names, app.jobs.JobSpec.owner); None when it is gone: the job then finds nothing to do."""
    model = Account if owner == Owner.ACCOUNT else OutboxEntry
    with ctx.sessions() as session:
        return session.scalar(select(model.tenant_id).where(model.id == object_id))
