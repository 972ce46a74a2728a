"""The dev stack's settings allow exactly its own mail servers, nothing else on loopback."""

from __future__ import annotations

import time

import pytest

from app.config import Settings
from app.mail import MailConnectionError
from app.mail.policy import HostPolicy
from devstack.dev import dev_settings


def test_the_dev_stack_allows_exactly_its_own_mail_listeners(stack, env):
    settings = dev_settings(stack)
    mail = [
        stack.imap_port,
        stack.imaps_port,
        stack.submission_port,
        stack.submissions_port,
        stack.smtp_port,
    ]
    assert sorted(settings["ALLOWED_PRIVATE_HOSTS"].split(",")) == sorted(
        f"127.0.0.1:{port}" for port in mail
    )
    allowed = Settings.from_mapping({**env, **settings}).allowed_private_hosts
    policy = HostPolicy(allowed)
    deadline = time.monotonic() + 10
    for port in mail:
        assert policy.check("127.0.0.1", port, deadline) == "127.0.0.1"
    # Its database, Redis, LMTP and SASL listeners stay out of tenants' reach.
    others = [stack.postgres_port, stack.redis_port, stack.lmtp_port, stack.auth_port, 6379]
    for port in others:
        with pytest.raises(MailConnectionError, match="address not allowed"):
            policy.check("127.0.0.1", port, deadline)
