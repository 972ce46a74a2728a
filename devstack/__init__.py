"""A local stack of real servers (PostgreSQL, Redis, Dovecot, Postfix) on 127.0.0.1.

    from devstack import Stack, StackInfo
    # persistent=False (the default): processes, data, database and Redis db go on exit
    with Stack(name="test-3f2a", root=Path(".stack")) as info:
        psycopg.connect(info.database_dsn); imaplib.IMAP4(info.host, info.imap_port) ...

Servers are ordinary processes on free ports, their state in `<root>/<name>` (or in
/var/tmp/emailservice-stack/, linked from there, when system users cannot reach `<root>`).
Several stacks run side by side. DATABASE_URL / REDIS_URL in the environment (or `environ=`),
when they answer, make a stack reuse those servers (a fresh database; an empty Redis db 1..15
that it claims) instead of starting its own. Stack.add_user() adds mailboxes to a running
stack, Stack.flush_redis() empties its Redis db, prune() removes stacks of crashed test runs.
Needs root (Postfix). CLI: `python -m devstack up|down|env|status|prune --name NAME`.
"""

from __future__ import annotations

from devstack.errors import StackError
from devstack.stack import MAIL_DOMAIN, Stack, StackInfo, prune

__all__ = ["MAIL_DOMAIN", "Stack", "StackError", "StackInfo", "prune"]
