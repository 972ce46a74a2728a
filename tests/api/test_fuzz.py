"""Property-based fuzzing of every endpoint against /openapi.json (schemathesis).

Two tenants' tokens; every generated request must get a documented, non-5xx response that
matches its schema, and schema-valid data must be accepted. `"verify": true` is turned off:
it makes the service log in to the generated host, which rightly refuses (422) what the
schema allows; verification has its own tests against the stack's servers. A guard keeps name
resolution to loopback all the same, so no generated host name ever reaches the network.
A changed server gets a password with it, as the service requires.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

_real_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise socket.gaierror(socket.EAI_NONAME, f"tests resolve loopback only, not {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture
def fuzzed_app(env, migrated, monkeypatch):
    from app import create_app
    from tests.support import allowing

    monkeypatch.setattr(socket, "getaddrinfo", _loopback_only)
    # The host policy refuses what the schema allows (loopback, private addresses) on
    # purpose, at request time; here every address is allowed so schema-valid data is taken.
    # The policy has tests of its own (tests/api/test_outbound.py).
    app = create_app(allowing(env, "0.0.0.0/0", "::/0"))
    app.config["TESTING"] = True
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("fuzzed_app")


@pytest.fixture(scope="module")
def tokens(ctx):
    from tests.conftest import make_tenant_user

    return [make_tenant_user(ctx, "fuzz").token for _ in range(2)]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case, tokens):
    if isinstance(case.body, dict) and case.body.get("verify") is True:
        case.body["verify"] = False
    if isinstance(case.body, dict) and case.method in ("PUT", "PATCH"):
        # A changed server needs its password again (a 422 the schema cannot express: it
        # depends on what is stored); tests/api/test_outbound.py tests that rule.
        for kind in ("imap", "smtp"):
            server = case.body.get(kind)
            if isinstance(server, dict) and server.get("password") is None:
                server["password"] = "fuzz-password"
    for token in tokens:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"})
        assert response.status_code < 500
