"""The deployed test hosts, one per supported Debian release, each booted and deployed once per
session and shared by the level-3/4 test modules (a boot and a full deploy are the slow part:
about two minutes per release)."""

from __future__ import annotations

import base64
import os
import secrets
import sys
import time
import uuid

import pytest

from tests.deploy.deployment import (
    Deployment,
    failure_summary,
    pyinfra,
    snapshot,
    write_inventory,
)
from tests.deploy.inventory import all_packages
from tests.deploy.testhost import RELEASES, boot_test_host, ensure_tools
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


@pytest.fixture(scope="session", params=RELEASES)
def deployed(request, tmp_path_factory) -> Deployment:
    """A booted host (every role) of each supported Debian release (Debian 13 "trixie", then
    Debian 12 "bookworm"), deployed twice with the vagrant environment's data. Tests that use it
    run once per release; one host is up at a time. Mail it sends to PEER_DOMAIN goes to an SMTP
    peer of this run on the host's gateway, one that does not announce 8BITMIME (so the host's
    Postfix has to convert 8-bit mail for it)."""
    release = request.param
    ensure_tools()
    tmp = tmp_path_factory.mktemp(f"deploy-{release}")
    source = snapshot(tmp / "source")
    secret_values = new_secrets()
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    name = uuid.uuid4().hex[:6]
    with (
        boot_test_host(name, all_packages("vagrant"), release=release) as host,
        SmtpPeer(address=host.gateway, eightbitmime=False) as peer,
    ):
        route = {PEER_DOMAIN: f"smtp:[{host.gateway}]:{peer.port}"}
        data = {**host.pyinfra_host_data(), "mail_transports": route}
        inventory = write_inventory(tmp / "vagrant.py", {"vagrant": [(host.address, data)]})
        started = time.monotonic()
        first = pyinfra(source, inventory, environ, "--diff")
        print(f"{release}: first deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        if first.returncode != 0:
            failed = host.run("systemctl --failed --plain --no-legend").stdout
            journals = "".join(
                host.journal(line.split()[0], 40) for line in failed.splitlines() if line.strip()
            )
            pytest.fail(
                f"first deploy on {release} failed:\n{failure_summary(first)}\n"
                f"failed units:\n{failed}\n{journals}"
            )
        started = time.monotonic()
        second = pyinfra(source, inventory, environ, "--json")
        print(f"{release}: second deploy: {time.monotonic() - started:.0f} s", file=sys.stderr)
        ca = tmp / "host-cert.pem"
        ca.write_text(host.run("cat /etc/emailservice/tls/cert.pem").stdout)
        yield Deployment(host, source, inventory, ca, secret_values, first, second, release, peer)
