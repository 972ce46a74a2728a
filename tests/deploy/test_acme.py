"""Certificates from an ACME CA (`tls_mode = "acme"`) on a booted host with every role (level
4, docs/deploy.md), against Pebble (tests/deploy/acme.py). Checked from outside, with Pebble's
root only: nginx (443), Dovecot (993) and Postfix (587, STARTTLS) serve the issued certificate
(the challenge answered through nginx); a forced renewal puts a new one in all three without
restarting the API; a second deploy changes nothing. A mail host without nginx:
test_acme_mail.py.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from tests.deploy.acme import API_NAME, MAIL_NAME, deployed_with_acme, force_renewal, served
from tests.deploy.deployment import changed_operations, failure_summary, pyinfra

pytestmark = pytest.mark.level4


@pytest.fixture(scope="module")
def acme_host(tmp_path_factory):
    with deployed_with_acme(tmp_path_factory.mktemp("acme"), api_hostname=API_NAME) as deployed:
        yield deployed


def _everywhere(address: str, roots: Path) -> set[str]:
    """The serial numbers nginx, Dovecot and Postfix serve (each verified with `roots`)."""
    return {
        served(address, 443, API_NAME, roots)["serialNumber"],
        served(address, 993, MAIL_NAME, roots)["serialNumber"],
        served(address, 587, MAIL_NAME, roots, starttls=True)["serialNumber"],
    }


def test_acme_issues_one_certificate_that_every_server_serves(acme_host):
    host, _, _, _, roots, _ = acme_host
    serials = _everywhere(host.address, roots)
    assert len(serials) == 1  # one certificate for both names, in nginx, Dovecot and Postfix
    names = {
        value
        for kind, value in served(host.address, 443, API_NAME, roots)["subjectAltName"]
        if kind == "DNS"
    }
    assert names == {API_NAME, MAIL_NAME}
    # The API answers through nginx with it, by its name (verified against Pebble's root).
    context = ssl.create_default_context(cafile=str(roots))
    with socket.create_connection((host.address, 443), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=API_NAME) as tls:
            tls.sendall(
                f"GET /health HTTP/1.1\r\nHost: {API_NAME}\r\nConnection: close\r\n\r\n".encode()
            )
            assert tls.makefile("rb").readline().split()[1] == b"200"


def test_a_renewed_certificate_is_served_without_restarting_the_api(acme_host):
    host, _, _, _, roots, _ = acme_host
    api_pids = host.run(
        "systemctl show -p MainPID --value 'emailservice-api@*.service' | sort"
    ).stdout.split()
    assert all(pid != "0" for pid in api_pids) and api_pids
    force_renewal(host, lambda: _everywhere(host.address, roots))  # all three reloaded it
    assert (
        host.run(
            "systemctl show -p MainPID --value 'emailservice-api@*.service' | sort"
        ).stdout.split()
        == api_pids
    )


def test_a_second_acme_deploy_changes_nothing(acme_host):
    host, source, inventory, environ, _, pebble = acme_host
    second = pyinfra(source, inventory, environ, "--json")
    assert second.returncode == 0, failure_summary(second)
    assert changed_operations(second) == []
