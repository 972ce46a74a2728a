"""The sync tests run against both kinds of Dovecot: with CONDSTORE/QRESYNC, and without."""

from __future__ import annotations

import pytest

from tests.mailbox import UserPool


@pytest.fixture(params=["condstore", "plain"])
def server(request):
    """A stack control: Dovecot with CONDSTORE/QRESYNC, or with them switched off."""
    name = "stack_control" if request.param == "condstore" else "plain_stack_control"
    return request.getfixturevalue(name)


@pytest.fixture
def mailbox(server, user_pools):
    pool = user_pools.setdefault(server.name, UserPool(server))
    return pool.take()
