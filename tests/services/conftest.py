"""Fixtures for the sync tests: mailboxes on both kinds of Dovecot, accounts pointing at them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.mail import ServerSettings
from app.models import Folder, Message
from app.secrets import SecretBox
from app.services.accounts import AccountFields, create_account
from app.services.sync import Syncer, SyncLimits
from app.tenancy import bind_tenant
from tests.mailbox import UserPool


@pytest.fixture(scope="session")
def user_pools():
    return {}


@pytest.fixture(params=["condstore", "plain"])
def server(request):
    """A stack control: Dovecot with CONDSTORE/QRESYNC, or with them switched off."""
    name = "stack_control" if request.param == "condstore" else "plain_stack_control"
    return request.getfixturevalue(name)


@pytest.fixture
def mailbox(server, user_pools):
    pool = user_pools.setdefault(server.name, UserPool(server))
    return pool.take()


def add_account(sessionmaker, env, tenant_id: int, mailbox) -> int:
    """An account row for `mailbox`, IMAP in plain text over loopback."""
    box = SecretBox(tuple(env["ENCRYPTION_KEY"].split(",")))
    imap = ServerSettings(mailbox.host, mailbox.imap_port, "none", mailbox.email, mailbox.password)
    smtp = ServerSettings(
        mailbox.host, mailbox.submission_port, "starttls", mailbox.email, mailbox.password
    )
    with sessionmaker() as session:
        bind_tenant(session, tenant_id)
        account = create_account(
            session, box, AccountFields(mailbox.email, None, imap, smtp), verify=False, ca_file=None
        )
        session.commit()
        return account.id


@pytest.fixture
def account_id(db_sessionmaker, env, tenant_a, mailbox) -> int:
    return add_account(db_sessionmaker, env, tenant_a.tenant_id, mailbox)


@pytest.fixture
def make_syncer(db_sessionmaker, env):
    def make(observer=None, **limits) -> Syncer:
        box = SecretBox(tuple(env["ENCRYPTION_KEY"].split(",")))
        defaults = dict(
            max_messages=None,
            max_seconds=None,
            flag_scan_interval=timedelta(0),
        )
        defaults.update(limits)
        return Syncer(db_sessionmaker, box, None, SyncLimits(**defaults), observer)

    return make


def stored(sessionmaker, account_id: int) -> dict[str, dict[int, Message]]:
    """The current copies per folder name: {folder: {uid: Message}}."""
    with sessionmaker() as session:
        folders = session.scalars(select(Folder).where(Folder.account_id == account_id)).all()
        result = {}
        for folder in folders:
            rows = session.scalars(
                select(Message).where(
                    Message.folder_id == folder.id, Message.uidvalidity == folder.uidvalidity
                )
            ).all()
            result[folder.name] = {m.uid: m for m in rows}
        return result
