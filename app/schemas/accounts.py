"""Account request and response shapes; passwords go in, never out."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from app.models import Account
from app.schemas.common import EmailAddress, Input, Page, PatchInput, TextEnum, Timestamp, integral
from app.schemas.pagination import ID, PageParams, cursor_field
from app.services.accounts import AccountFields, ServerFields
from app.states import AccountState
from app.states import Security as SecurityValue

Security = Annotated[SecurityValue, TextEnum]
# A host name (ASCII; IDN names in their xn-- form) or an address: printable ASCII without
# spaces or slashes. Ranges, not \s: Python's \s and JSON Schema's (ECMA) differ on U+0085.
Host = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[\x21-\x2e\x30-\x7e]+$")
]
Username = Annotated[
    str, StringConstraints(min_length=1, max_length=320, pattern=r"^[^\x00-\x1f\x7f]+$")
]
# Any characters but NUL, which neither PostgreSQL nor the mail protocols can carry.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
Port = Annotated[int, Field(ge=1, le=65535), BeforeValidator(integral)]
DisplayName = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


HOST_HELP = (
    "Refused (422) when it resolves to a loopback, private, link-local or reserved address "
    "the operator does not allow (ALLOWED_PRIVATE_HOSTS)."
)
SECURITY_HELP = '"none" (clear text) only for private hosts the operator allows.'
PASSWORD_HELP = (
    "Left out: the stored one, unless this server's host, port, username or security "
    "changes (then it is required)."
)
VERIFY_HELP = (
    "Log in to both servers first, within one deadline (VERIFY_TIMEOUT_SECONDS); a failure "
    "is a 422 naming the server with a short reason; too many at once: 429."
)


class ServerCreate(Input):
    host: Host = Field(description=HOST_HELP)
    port: Port
    security: Security = Field(description=SECURITY_HELP)
    username: Username
    password: Password

    def fields(self) -> ServerFields:
        return ServerFields(self.host, self.port, self.security, self.username, self.password)


class ServerReplace(Input):
    """As on create, but a password left out keeps the stored one (same server only)."""

    host: Host = Field(description=HOST_HELP)
    port: Port
    security: Security = Field(description=SECURITY_HELP)
    username: Username
    password: Password | None = Field(None, description=PASSWORD_HELP)

    def fields(self) -> ServerFields:
        return ServerFields(self.host, self.port, self.security, self.username, self.password)


class ServerPatch(PatchInput):
    host: Host = Field(None, description=HOST_HELP)  # type: ignore[assignment]
    port: Port = None  # type: ignore[assignment]
    security: Security = Field(None, description=SECURITY_HELP)  # type: ignore[assignment]
    username: Username = None  # type: ignore[assignment]
    password: Password = Field(None, description=PASSWORD_HELP)  # type: ignore[assignment]


class AccountCreate(Input):
    email: EmailAddress
    display_name: DisplayName | None = None
    imap: ServerCreate
    smtp: ServerCreate
    verify: bool = Field(False, description=VERIFY_HELP)

    def fields(self) -> AccountFields:
        return AccountFields(self.email, self.display_name, self.imap.fields(), self.smtp.fields())


class AccountReplace(Input):
    email: EmailAddress
    display_name: DisplayName | None = None
    imap: ServerReplace
    smtp: ServerReplace
    verify: bool = Field(False, description=VERIFY_HELP)

    def fields(self) -> AccountFields:
        return AccountFields(self.email, self.display_name, self.imap.fields(), self.smtp.fields())


class AccountPatch(PatchInput):
    email: EmailAddress = None  # type: ignore[assignment]
    display_name: DisplayName | None = None
    imap: ServerPatch = None  # type: ignore[assignment]
    smtp: ServerPatch = None  # type: ignore[assignment]
    verify: bool = Field(False, description=VERIFY_HELP)


class ServerOut(BaseModel):
    host: str
    port: int
    security: SecurityValue
    username: str

    @classmethod
    def of(cls, account: Account, kind: str) -> ServerOut:
        return cls(
            host=getattr(account, f"{kind}_host"),
            port=getattr(account, f"{kind}_port"),
            security=getattr(account, f"{kind}_security"),
            username=getattr(account, f"{kind}_username"),
        )


class AccountOut(BaseModel):
    id: int
    email: str
    display_name: str | None
    imap: ServerOut
    smtp: ServerOut
    state: AccountState
    last_error: str | None
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, account: Account) -> AccountOut:
        return cls(
            id=account.id,
            email=account.email,
            display_name=account.display_name,
            imap=ServerOut.of(account, "imap"),
            smtp=ServerOut.of(account, "smtp"),
            state=account.state,
            last_error=account.last_error,
            created_at=account.created_at,
            updated_at=account.updated_at,
        )


class AccountPage(Page[AccountOut]):
    pass


class AccountListParams(PageParams):
    cursor: str | None = cursor_field(ID)
