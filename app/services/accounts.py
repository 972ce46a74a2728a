"""Mail accounts: create, read, update, delete, with encrypted credentials.

Every function takes a tenant-bound session (see app.tenancy), so a lookup of another
tenant's account finds nothing and raises NotFound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFound, ValidationFailed
from app.mail import MailAuthError, MailConnectionError, ServerSettings, imap, smtp
from app.models import Account
from app.secrets import SecretBox
from app.states import AccountState

Verifier = Callable[[ServerSettings], None]


@dataclass(frozen=True)
class AccountFields:
    """What a client sets on an account; a server's password None keeps the stored one."""

    email: str
    display_name: str | None
    imap: ServerSettings
    smtp: ServerSettings


def get_account(session: Session, account_id: int) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"Account {account_id} does not exist.")
    return account


def list_accounts(session: Session, after_id: int | None, limit: int) -> list[Account]:
    query = select(Account).order_by(Account.id).limit(limit)
    if after_id is not None:
        query = query.where(Account.id > after_id)
    return list(session.scalars(query))


def server_settings(account: Account, box: SecretBox, kind: str) -> ServerSettings:
    """The decrypted IMAP or SMTP settings of an account, for the protocol adapters."""
    return ServerSettings(
        host=getattr(account, f"{kind}_host"),
        port=getattr(account, f"{kind}_port"),
        security=getattr(account, f"{kind}_security"),
        username=getattr(account, f"{kind}_username"),
        password=box.decrypt(getattr(account, f"{kind}_password_encrypted")),
    )


def verify_servers(fields: AccountFields, ca_file: str | None) -> None:
    """Log in to both servers; ValidationFailed carrying each server's reason otherwise."""
    problems = []
    for kind, check in (("imap", imap.check_login), ("smtp", smtp.check_login)):
        try:
            check(getattr(fields, kind), ca_file)
        except (MailAuthError, MailConnectionError) as exc:
            problems.append({"field": kind, "message": str(exc)})
    if problems:
        raise ValidationFailed("The mail servers did not accept these settings.", problems)


def create_account(
    session: Session, box: SecretBox, fields: AccountFields, *, verify: bool, ca_file: str | None
) -> Account:
    if verify:
        verify_servers(fields, ca_file)
    account = Account(
        email=fields.email, display_name=fields.display_name, state=AccountState.ACTIVE
    )
    _apply(account, box, fields)
    session.add(account)
    session.flush()
    return account


def update_account(
    session: Session,
    box: SecretBox,
    account: Account,
    fields: AccountFields,
    *,
    verify: bool,
    ca_file: str | None,
) -> Account:
    """Replace the account's settings; passwords left out (None) keep their stored values."""
    complete = replace(
        fields,
        imap=_with_stored_password(account, box, "imap", fields.imap),
        smtp=_with_stored_password(account, box, "smtp", fields.smtp),
    )
    if verify:
        verify_servers(complete, ca_file)
    changed_credentials = any(
        _credentials(complete, kind) != _credentials(current_fields(account, box), kind)
        for kind in ("imap", "smtp")
    )
    account.email, account.display_name = complete.email, complete.display_name
    account.updated_at = func.now()
    _apply(account, box, complete)
    # New credentials are the user's answer to an auth failure: try the account again.
    if changed_credentials and account.state == AccountState.AUTH_FAILED:
        account.state, account.last_error = AccountState.ACTIVE, None
    session.flush()
    return account


def current_fields(account: Account, box: SecretBox) -> AccountFields:
    """The account's settings as they are stored, passwords decrypted."""
    return AccountFields(
        email=account.email,
        display_name=account.display_name,
        imap=server_settings(account, box, "imap"),
        smtp=server_settings(account, box, "smtp"),
    )


def delete_account(session: Session, account: Account) -> None:
    """Remove the account; its synced data goes with it (foreign keys cascade)."""
    session.delete(account)
    session.flush()


def _with_stored_password(
    account: Account, box: SecretBox, kind: str, server: ServerSettings
) -> ServerSettings:
    if server.password is not None:
        return server
    return replace(server, password=box.decrypt(getattr(account, f"{kind}_password_encrypted")))


def _credentials(fields: AccountFields, kind: str) -> tuple:
    server: ServerSettings = getattr(fields, kind)
    return (server.host, server.port, server.security, server.username, server.password)


def _apply(account: Account, box: SecretBox, fields: AccountFields) -> None:
    for kind in ("imap", "smtp"):
        server: ServerSettings = getattr(fields, kind)
        if server.password is None:
            raise ValidationFailed(
                f"{kind}.password is required.",
                [{"field": f"{kind}.password", "message": "required"}],
            )
        setattr(account, f"{kind}_host", server.host)
        setattr(account, f"{kind}_port", server.port)
        setattr(account, f"{kind}_security", server.security)
        setattr(account, f"{kind}_username", server.username)
        setattr(account, f"{kind}_password_encrypted", box.encrypt(server.password))


def rotate_secrets(session: Session, box: SecretBox) -> tuple[int, int]:
    """Re-encrypt every account password under the newest key; (re-encrypted, total).

    Rows are locked while rotated so a concurrent update cannot write back an old token.
    """
    rotated = total = 0
    for account in session.scalars(select(Account).order_by(Account.id).with_for_update()):
        for column in ("imap_password_encrypted", "smtp_password_encrypted"):
            total += 1
            token = getattr(account, column)
            if not box.is_current(token):
                setattr(account, column, box.rotate(token))
                rotated += 1
    session.flush()
    return rotated, total
