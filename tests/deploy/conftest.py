"""The deployed test host, booted and deployed once per session and shared by the level-3/4
test modules (a boot and a full deploy are the slow part: about two minutes)."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
import uuid

import pytest

from tests.deploy.deployment import Deployment, pyinfra, snapshot, write_inventory
from tests.deploy.inventory import all_packages
from tests.deploy.testhost import boot_test_host, ensure_tools
from tests.smtp_peer import SmtpPeer

# Mail to this domain leaves the deployed host for the session's own SMTP peer (test_dkim.py).
PEER_DOMAIN = "peer.test"


def new_secrets(*extra: str) -> dict[str, str]:
    """One environment's secrets, made for this run (never the developer's own)."""
    values = {
        "JWT_SECRET": secrets.token_urlsafe(40),
        "ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "MAILBOX_TEST_PASSWORD": secrets.token_urlsafe(18),
    }
    values.update({name: secrets.token_urlsafe(24) for name in extra})
    return values


@pytest.fixture(scope="session")
def deployed(tmp_path_factory) -> Deployment:
    """A booted host (every role) deployed twice with the vagrant environment's data; mail it
    sends to PEER_DOMAIN goes to an SMTP peer of this run on the host's gateway, one that does
    not announce 8BITMIME (so the host's Postfix has to convert 8-bit mail for it)."""
    ensure_tools()
    tmp = tmp_path_factory.mktemp("deploy")
    source = snapshot(tmp / "source")
    secret_values = new_secrets()
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    with (
        boot_test_host(uuid.uuid4().hex[:6], all_packages("vagrant")) as host,
        SmtpPeer(address=host.gateway, eightbitmime=False) as peer,
    ):
        route = {PEER_DOMAIN: f"smtp:[{host.gateway}]:{peer.port}"}
        data = {**host.pyinfra_host_data(), "mail_transports": route}
        inventory = write_inventory(tmp / "vagrant.py", {"vagrant": [(host.address, data)]})
        started = time.monotonic()
        first = pyinfra(source, inventory, environ, "--diff")
        print(f"first deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        if first.returncode != 0:
            pytest.fail(f"first deploy failed:\n{first.stdout[-6000:]}\n{first.stderr[-3000:]}")
        started = time.monotonic()
        second = pyinfra(source, inventory, environ, "--json")
        print(f"second deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        ca = tmp / "host-cert.pem"
        ca.write_text(host.run("cat /etc/emailservice/tls/cert.pem").stdout)
        yield Deployment(host, source, inventory, ca, secret_values, first, second, peer)
