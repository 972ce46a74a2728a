"""Mail accounts: connect, read, change and delete them, with encrypted credentials.

Every function works in a tenant-bound unit on the API's path (app.tenancy), so a lookup of
another tenant's account finds nothing and raises NotFound.

Three rules keep a tenant from turning an account against the service or its users:
- a host the outbound host policy refuses (app.mail.policy) is refused when the settings are
  submitted, and `security: "none"` only for private hosts the operator allows;
- a stored password is never sent to a server it was not given for: changing a server's host,
  port, username or security needs that server's password again, in the same request;
- a verification logs in to both servers within one deadline (VERIFY_TIMEOUT_SECONDS), and at
  most VERIFY_MAX_IN_FLIGHT run at once per tenant across every API process (a Redis lease)
  and VERIFY_MAX_IN_FLIGHT_TOTAL per process: no number of verifications can hold the API's
  threads.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from app.context import Unit
from app.errors import NotFound, RateLimited, ValidationFailed
from app.mail import Category, LoginProblem, ServerSettings, VerifyBusy
from app.mail.policy import REFUSALS
from app.models import Account, Folder
from app.secrets import SecretBox
from app.services import usage
from app.states import AccountState, Security
from app.tenancy import bound_tenant

KINDS = ("imap", "smtp")
# How long checking a submitted host (resolving it) may take when nothing is verified: a
# resolver answers in milliseconds; an unanswered name is checked again at connection time.
HOST_CHECK_SECONDS = 2.0
# A tenant's verification lease outlives the deadline by this much (a crashed process's
# lease then frees itself soon after the verification could have ended).
LEASE_MARGIN_SECONDS = 5


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
    _check(unit, complete, verify)
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
    """Replace the account's settings; passwords left out (None) keep their stored values,
    unless that server's host, port, username or security changes (then it is required)."""
    account = get_account(unit, account_id)
    box = unit.ctx.secrets
    before = {kind: unit.ctx.connector.server(account, kind) for kind in KINDS}
    _require_password_for_a_new_server(before, {"imap": fields.imap, "smtp": fields.smtp})
    complete = {
        kind: server.with_password(server.password or before[kind].password)
        for kind, server in (("imap", fields.imap), ("smtp", fields.smtp))
    }
    _check(unit, complete, verify)
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


def _require_password_for_a_new_server(
    before: Mapping[str, ServerSettings], given: Mapping[str, ServerFields]
) -> None:
    """A stored password goes only to the server it was given for: a change of host, port,
    username or security without that server's password is refused."""
    details = []
    for kind in KINDS:
        old, new = before[kind], given[kind]
        moved = (old.host, old.port, old.username, Security(old.security)) != (
            new.host,
            new.port,
            new.username,
            Security(new.security),
        )
        if moved and new.password is None:
            details.append(
                {
                    "field": f"{kind}.password",
                    "message": "required when the server changes (host, port, username or "
                    "security): the stored password is only ever sent to the server it was "
                    "given for",
                }
            )
    if details:
        raise ValidationFailed("The password is required when the server changes.", details)


def _check(unit: Unit, servers: Mapping[str, ServerSettings], verify: bool) -> None:
    """The host policy's verdict on the submitted servers, and with `verify` their logins:
    ValidationFailed naming the refused fields, RateLimited when verifying too much at once.

    Without verify, resolving is bounded by HOST_CHECK_SECONDS; with it, the policy is
    checked inside the verification, under its deadline and its limits."""
    if not verify:
        deadline = time.monotonic() + HOST_CHECK_SECONDS
        refusals = [
            (kind, refusal)
            for kind in KINDS
            if (refusal := unit.ctx.connector.host_problem(servers[kind], deadline))
        ]
        _refuse(refusals)
        return
    problems = _verify(unit, servers["imap"], servers["smtp"])
    _refuse([(p.server, p.category) for p in problems if p.category in REFUSALS])
    if problems:
        raise ValidationFailed(
            "The mail servers did not accept these settings.",
            [{"field": p.server, "message": p.message} for p in problems],
        )


def _refuse(refusals: list[tuple[str, str]]) -> None:
    """422 on `imap.host`/`smtp.host` for an address the policy refuses, on `*.security` for
    clear text to a host the operator does not allow."""
    details = []
    for kind, refusal in refusals:
        if refusal == Category.ADDRESS_NOT_ALLOWED:
            details.append(
                {
                    "field": f"{kind}.host",
                    "message": "address not allowed: this host resolves to an address the "
                    "service does not connect to (loopback, private, link-local or reserved)",
                }
            )
        else:
            details.append(
                {
                    "field": f"{kind}.security",
                    "message": '"none" (clear text) is accepted only for private hosts the '
                    "operator allows (ALLOWED_PRIVATE_HOSTS); use ssl or starttls",
                }
            )
    if details:
        raise ValidationFailed("These servers are not allowed.", details)


def _verify(unit: Unit, imap: ServerSettings, smtp: ServerSettings) -> list[LoginProblem]:
    """Each server's problem, if any, once both were tried within the deadline; RateLimited
    when the tenant or this process already verifies as much as it may."""
    settings = unit.ctx.settings
    with _tenant_lease(unit):
        deadline = time.monotonic() + settings.verify_timeout_seconds
        try:
            return unit.ctx.connector.check_logins(imap, smtp, deadline)
        except VerifyBusy:
            seconds = settings.verify_timeout_seconds
            raise RateLimited(
                f"Too many verifications at once on this server; retry in {seconds} s.",
                retry_after=seconds,
            ) from None


# A tenant's verifications in flight, shared by every API process: a sorted set of leases
# scored by when they expire (Redis's clock, so API hosts need not agree on the time).
_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(first[2]) - ms
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"""


@contextmanager
def _tenant_lease(unit: Unit) -> Iterator[None]:
    """One of the tenant's VERIFY_MAX_IN_FLIGHT leases for the block, or RateLimited with the
    seconds until the first lease ends. A lease lasts no shorter than the deadline, so one
    left by a crashed process frees itself."""
    settings = unit.ctx.settings
    tenant = bound_tenant(unit.session)
    key = f"emailservice:verify:{tenant if tenant is not None else 'system'}"
    token = secrets.token_hex(8)
    lease_ms = (settings.verify_timeout_seconds + LEASE_MARGIN_SECONDS) * 1000
    result: Any = unit.ctx.redis.eval(
        _ACQUIRE, 1, key, settings.verify_max_in_flight, lease_ms, token
    )
    waited = int(result)
    if waited >= 0:
        seconds = max(math.ceil(waited / 1000), 1)
        raise RateLimited(
            f"This tenant already runs {settings.verify_max_in_flight} verifications; "
            f"retry in {seconds} s.",
            retry_after=seconds,
        )
    try:
        yield
    finally:
        unit.ctx.redis.zrem(key, token)


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
