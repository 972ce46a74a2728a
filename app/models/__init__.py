"""SQLAlchemy models, one module per domain word; importing this registers them all."""

from app.models.accounts import Account
from app.models.compose import Draft, DraftAttachment, OutboxEntry
from app.models.sync import Folder, Message, MessageChange, MessageRaw
from app.models.tenants import Tenant, TenantUsage, User

__all__ = [
    "Account",
    "Draft",
    "DraftAttachment",
    "Folder",
    "OutboxEntry",
    "Message",
    "MessageChange",
    "MessageRaw",
    "Tenant",
    "TenantUsage",
    "User",
]
