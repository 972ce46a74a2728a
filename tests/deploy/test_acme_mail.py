"""Certificates from an ACME CA (`tls_mode = "acme"`) on a mail host without nginx (level 4,
docs/deploy.md), against Pebble (tests/deploy/acme.py): a booted host in the inventory's `mail`
group only, as the data/mail host of the production example's split layout (its other roles
change nothing here, so no second host or private link). certbot answers the challenge itself
on port 80; checked from outside with Pebble's root only: Dovecot (993) and Postfix (587,
STARTTLS) serve a certificate for the mail name; a forced renewal (certbot's own server again,
as certbot.timer renews) reaches both; a second deploy changes nothing.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.deploy.acme import MAIL_NAME, deployed_with_acme, force_renewal, served
from tests.deploy.deployment import changed_operations, failure_summary, pyinfra

pytestmark = pytest.mark.level4


@pytest.fixture(scope="module")
def acme_mail_host(tmp_path_factory):
    """A host with the mail role only: no nginx, no API, no database."""
    with deployed_with_acme(tmp_path_factory.mktemp("acme-mail"), ("mail",)) as deployed:
        yield deployed


def _port(address: str, port: int) -> str:
    """From outside: "refused" (the firewall lets it in, nothing listens), "open" or "dropped"."""
    try:
        with socket.create_connection((address, port), timeout=3):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "dropped"


def _mail_serials(address: str, roots: Path) -> set[str]:
    """The serial numbers Dovecot and Postfix serve for the mail name (verified with `roots`)."""
    return {
        served(address, 993, MAIL_NAME, roots)["serialNumber"],
        served(address, 587, MAIL_NAME, roots, starttls=True)["serialNumber"],
    }


def test_a_mail_host_without_nginx_is_issued_a_certificate_by_certbot_itself(acme_mail_host):
    host, _, _, _, roots, _ = acme_mail_host
    assert host.run("test -e /usr/sbin/nginx").returncode != 0  # no nginx on this host
    assert len(_mail_serials(host.address, roots)) == 1  # one certificate in Dovecot and Postfix
    names = {
        value
        for kind, value in served(host.address, 993, MAIL_NAME, roots)["subjectAltName"]
        if kind == "DNS"
    }
    assert names == {MAIL_NAME}
    # Answered by certbot's own server, as every renewal will be (certbot keeps the method).
    renewal = host.run("cat /etc/letsencrypt/renewal/emailservice.conf", check=True).stdout
    assert "authenticator = standalone" in renewal
    # Port 80 passes the firewall (refused, not dropped) and nothing listens there between
    # issuances; 443 stays shut.
    assert (_port(host.address, 80), _port(host.address, 443)) == ("refused", "dropped")
    # The hook reloads the servers this host has, nginx not among them.
    hook = host.run("cat /etc/emailservice/certbot-deploy-hook", check=True).stdout
    assert "\nfor unit in postfix dovecot; do\n" in hook


def test_a_forced_renewal_on_the_mail_host_reaches_dovecot_and_postfix(acme_mail_host):
    host, _, _, _, roots, _ = acme_mail_host
    # certbot binds port 80 itself for Pebble's check, as at the first issuance.
    force_renewal(host, lambda: _mail_serials(host.address, roots))
    assert _port(host.address, 80) == "refused"  # certbot's server is gone again


def test_a_second_acme_deploy_of_the_mail_host_changes_nothing(acme_mail_host):
    host, source, inventory, environ, _, _ = acme_mail_host
    second = pyinfra(source, inventory, environ, "--json")
    assert second.returncode == 0, failure_summary(second)
    assert changed_operations(second) == []
