"""A tenant's usage against its limits (GET /api/usage)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.services.usage import Usage


class LimitsOut(BaseModel):
    accounts: int = Field(description="TENANT_MAX_ACCOUNTS: mail accounts the tenant may connect")
    storage_bytes: int = Field(
        description="TENANT_MAX_STORAGE_BYTES: bytes of mail, drafts and outbox it may store"
    )
    concurrent_jobs: int = Field(
        description="TENANT_MAX_CONCURRENT_JOBS: workers its sync and send jobs may occupy at once"
    )
    verify_in_flight: int = Field(
        description="VERIFY_MAX_IN_FLIGHT: account verifications it may run at once"
    )


class UsageOut(BaseModel):
    accounts: int = Field(description="Mail accounts connected")
    storage_bytes: int = Field(
        description="Bytes stored: raw mail (each message once, uncompressed), drafts with "
        "their attachments, and outbox messages"
    )
    limits: LimitsOut

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        limits = usage.limits
        return cls(
            accounts=usage.accounts,
            storage_bytes=usage.storage_bytes,
            limits=LimitsOut(
                accounts=limits.accounts,
                storage_bytes=limits.storage_bytes,
                concurrent_jobs=limits.concurrent_jobs,
                verify_in_flight=limits.verify_in_flight,
            ),
        )
