"""Mail accounts: connect, read, change and delete them, with encrypted credentials.

Every function works in a tenant-bound unit on the API's path (app.tenancy), so a lookup of
another tenant's account finds nothing and raises NotFound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from app.context import Unit
from app.errors import NotFound, ValidationFailed
from app.mail import ServerSettings
from app.models import Account, Folder
from app.secrets import SecretBox
from app.services import usage
from app.states import AccountState, Security

KINDS = ("imap", "smtp")


@dataclass(frozen=True)
class ServerFields:
    """One server's settings as a client gives them; password None keeps the stored one."""

    host: str
    port: int
    security: Security
    username: str
    password: str | None = None

    def with_password(self, password: str) -> ServerSettings:
        return ServerSettings(self.host, self.port, self.security, self.username, password)


@dataclass(frozen=True)
class AccountFields:
    """What a client sets on an account."""

    email: str
    display_name: str | None
    imap: ServerFields
    smtp: ServerFields


def get_account(unit: Unit, account_id: int) -> Account:
    account = unit.session.get(Account, account_id)
    if account is None:
        raise NotFound(f"Account {account_id} does not exist.")
    return account


def list_accounts(unit: Unit, after_id: int | None, limit: int) -> list[Account]:
    """Accounts by id, after `after_id`."""
    query = select(Account).order_by(Account.id).limit(limit)
    if after_id is not None:
        query = query.where(Account.id > after_id)
    return list(unit.session.scalars(query))


def active_account(unit: Unit, account_id: int) -> Account | None:
    """The account when it exists and is active (a watcher stops otherwise)."""
    account = unit.session.get(Account, account_id)
    return account if account is not None and account.state == AccountState.ACTIVE else None


def active_accounts(unit: Unit) -> dict[int, datetime]:
    """Every active account's id, with when its settings last changed."""
    rows = unit.session.execute(
        select(Account.id, Account.updated_at).where(Account.state == AccountState.ACTIVE)
    )
    return {account_id: updated for account_id, updated in rows}


def list_folders(unit: Unit, account_id: int, after: str | None, limit: int) -> list[Folder]:
    """An account's folders by name, after the name `after`."""
    account = get_account(unit, account_id)
    query = select(Folder).where(Folder.account_id == account.id).order_by(Folder.name)
    if after is not None:
        query = query.where(Folder.name > after)
    return list(unit.session.scalars(query.limit(limit)))


def create_account(unit: Unit, fields: AccountFields, *, verify: bool) -> Account:
    """A new account; with `verify`, only once both servers accepted the settings."""
    complete = {kind: _required(kind, getattr(fields, kind)) for kind in KINDS}
    usage.claim_account(unit, lock=False)  # full: refused before spending a verification
    if verify:
        _verify(unit, complete["imap"], complete["smtp"])
    usage.claim_account(unit)  # TENANT_MAX_ACCOUNTS, counted under the tenant's lock
    account = Account(
        email=fields.email, display_name=fields.display_name, state=AccountState.ACTIVE
    )
    for kind, server in complete.items():
        _store(account, unit.ctx.secrets, kind, server)
    unit.session.add(account)
    unit.commit()
    return account


def replace_account(unit: Unit, account_id: int, fields: AccountFields, *, verify: bool) -> Account:
    """Replace the account's settings; passwords left out (None) keep their stored values."""
    account = get_account(unit, account_id)
    box = unit.ctx.secrets
    before = {kind: unit.ctx.connector.server(account, kind) for kind in KINDS}
    complete = {
        kind: server.with_password(server.password or before[kind].password)
        for kind, server in (("imap", fields.imap), ("smtp", fields.smtp))
    }
    if verify:
        _verify(unit, complete["imap"], complete["smtp"])
    changed_credentials = complete != before
    account.email, account.display_name = fields.email, fields.display_name
    account.updated_at = func.now()
    for kind, server in complete.items():
        _store(account, box, kind, server)
    # New credentials are the user's answer to an auth failure: try the account again.
    if changed_credentials and account.state == AccountState.AUTH_FAILED:
        account.state, account.last_error = AccountState.ACTIVE, None
    unit.commit()
    return account


def patch_account(
    unit: Unit, account_id: int, changes: Mapping[str, Any], *, verify: bool
) -> Account:
    """Change some settings: `changes` holds only the fields given (a server's as a mapping of
    its own fields); everything else keeps its stored value, passwords included."""
    account = get_account(unit, account_id)
    changes = dict(changes)
    servers = {}
    for kind in KINDS:
        stored = unit.ctx.connector.server(account, kind)
        current = ServerFields(stored.host, stored.port, Security(stored.security), stored.username)
        servers[kind] = replace(current, **(changes.pop(kind, None) or {}))
    current_fields = AccountFields(account.email, account.display_name, **servers)
    return replace_account(unit, account_id, replace(current_fields, **changes), verify=verify)


def delete_account(unit: Unit, account_id: int) -> None:
    """Remove the account; its synced data goes with it (foreign keys cascade)."""
    unit.session.delete(get_account(unit, account_id))
    unit.commit()


def rotate_secrets(unit: Unit) -> tuple[int, int]:
    """Re-encrypt every account password under the newest key; (re-encrypted, total).

    Rows are locked while rotated so a concurrent update cannot write back an old token.
    """
    box = unit.ctx.secrets
    rotated = total = 0
    for account in unit.session.scalars(select(Account).order_by(Account.id).with_for_update()):
        for column in ("imap_password_encrypted", "smtp_password_encrypted"):
            total += 1
            token = getattr(account, column)
            if not box.is_current(token):
                setattr(account, column, box.rotate(token))
                rotated += 1
    unit.commit()
    return rotated, total


def _verify(unit: Unit, imap: ServerSettings, smtp: ServerSettings) -> None:
    """ValidationFailed carrying each server's reason, unless both accept the login."""
    problems = unit.ctx.connector.check_logins(imap, smtp)
    if problems:
        raise ValidationFailed(
            "The mail servers did not accept these settings.",
            [{"field": p.server, "message": p.message} for p in problems],
        )


def _required(kind: str, server: ServerFields) -> ServerSettings:
    if server.password is None:
        raise ValidationFailed(
            f"{kind}.password is required.", [{"field": f"{kind}.password", "message": "required"}]
        )
    return server.with_password(server.password)


def _store(account: Account, box: SecretBox, kind: str, server: ServerSettings) -> None:
    setattr(account, f"{kind}_host", server.host)
    setattr(account, f"{kind}_port", server.port)
    setattr(account, f"{kind}_security", server.security)
    setattr(account, f"{kind}_username", server.username)
    setattr(account, f"{kind}_password_encrypted", box.encrypt(server.password))
