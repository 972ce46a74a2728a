"""The sync tests run against both kinds of Dovecot: with CONDSTORE/QRESYNC, and without."""

from __future__ import annotations

import pytest

from tests.mailbox import UserPool
from tests.support import allowing, mail_pairs


@pytest.fixture(scope="session")
def ctx(env, migrated, plain_stack_control):
    """The service context of these tests: its host policy allows the mail servers of both
    stacks (the second one's ports differ), and nothing else."""
    from app.config import Settings
    from app.context import ServiceContext

    settings = allowing(env, *mail_pairs(plain_stack_control.info))
    context = ServiceContext.build(Settings.from_mapping(settings))
    yield context
    context.close()


@pytest.fixture(params=["condstore", "plain"])
def server(request):
    """A stack control: Dovecot with CONDSTORE/QRESYNC, or with them switched off."""
    name = "stack_control" if request.param == "condstore" else "plain_stack_control"
    return request.getfixturevalue(name)


@pytest.fixture
def mailbox(server, user_pools):
    pool = user_pools.setdefault(server.name, UserPool(server))
    return pool.take()
