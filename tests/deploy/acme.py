"""A local ACME CA for the ACME tests (level 4, docs/deploy.md), and a booted host deployed
against it.

The CA is Pebble (Debian's `pebble` package), run by the test on this machine at the test
host's gateway address; `pebble-challtestsrv` answers Pebble's DNS lookups of the host's names
with the test host's address, so Pebble's HTTP-01 check reaches the host on port 80, as Let's
Encrypt's would. The deploy is the vagrant environment's, switched to ACME by host data (the
staging and production examples use ACME too).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.deploy.conftest import new_secrets
from tests.deploy.deployment import failure_summary, pyinfra, snapshot, write_inventory
from tests.deploy.inventory import all_packages
from tests.deploy.testhost import TestHost, boot_test_host, ensure_tools
from tests.support import free_port

MAIL_NAME = "mail.example.test"
API_NAME = "api.example.test"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pebble:
    """Pebble and its DNS stand-in, listening on `listen` (the test host's gateway)."""

    def __init__(self, root: Path, listen: str, answer: str) -> None:
        self.root, self.listen, self.answer = root, listen, answer
        self.port, self.management, self.dns = free_port(), free_port(), free_port()
        self.challtest_management = free_port()
        self.processes: list[subprocess.Popen] = []
        self.endpoint_ca = root / "endpoint-ca.pem"

    @property
    def directory(self) -> str:
        return f"https://{self.listen}:{self.port}/dir"

    def start(self) -> None:
        # Pebble ships no certificate for its own endpoint: a CA and a certificate of ours.
        root = self.root
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pebble CA",
            "-keyout", str(root / "endpoint-ca.key"), "-out", str(self.endpoint_ca),
        )  # fmt: skip
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pebble",
            "-keyout", str(root / "pebble.key"), "-out", str(root / "pebble.csr"),
        )  # fmt: skip
        (root / "san.ext").write_text(f"subjectAltName=IP:{self.listen},IP:127.0.0.1\n")
        _openssl(
            "x509", "-req", "-in", str(root / "pebble.csr"), "-days", "2",
            "-CA", str(self.endpoint_ca), "-CAkey", str(root / "endpoint-ca.key"),
            "-CAcreateserial", "-extfile", str(root / "san.ext"), "-out", str(root / "pebble.pem"),
        )  # fmt: skip
        config = {
            "pebble": {
                "listenAddress": f"{self.listen}:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management}",
                "certificate": str(root / "pebble.pem"),
                "privateKey": str(root / "pebble.key"),
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (root / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        dns = {
            "-defaultIPv4": self.answer,  # every name is the test host
            "-defaultIPv6": "",
            "-dns01": f"127.0.0.1:{self.dns}",
            "-management": f"127.0.0.1:{self.challtest_management}",
            "-http01": "",  # its challenge servers: off
            "-https01": "",
            "-tlsalpn01": "",
        }
        self._spawn(["pebble-challtestsrv", *(a for pair in dns.items() for a in pair)], env)
        config_file, dns_server = str(root / "pebble.json"), f"127.0.0.1:{self.dns}"
        self._spawn(["pebble", "-config", config_file, "-dnsserver", dns_server], env)
        deadline = time.monotonic() + 30
        while True:
            assert all(p.poll() is None for p in self.processes), self.log()
            try:
                self.issuing_root()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.2)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / f"{argv[0]}.log", "ab") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)

    def issuing_root(self) -> str:
        """Pebble's root (a new one at every start), from its management port."""
        context = ssl.create_default_context(cafile=str(self.endpoint_ca))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@contextmanager
def deployed_with_acme(tmp: Path, groups: tuple[str, ...] = (), **extra) -> Iterator[tuple]:
    """A booted host in the inventory's `groups` (none: every role), its own Pebble, deployed
    once with ACME: (host, source, inventory, environ, Pebble's root, pebble)."""
    ensure_tools()
    source = snapshot(tmp / "source")
    secret_values = new_secrets()
    environ = {f"EMAILSERVICE_{k}": v for k, v in secret_values.items()}
    with boot_test_host(uuid.uuid4().hex[:6], all_packages("vagrant")) as host:
        pebble = Pebble(tmp, host.gateway, host.address)
        pebble.start()
        try:
            bundle = tmp / "acme-roots.pem"
            bundle.write_text(pebble.endpoint_ca.read_text() + pebble.issuing_root())
            roots = tmp / "pebble-root.pem"
            roots.write_text(pebble.issuing_root())
            data = {
                **host.pyinfra_host_data(),
                "tls_mode": "acme",
                "mail_hostname": MAIL_NAME,
                "acme_server": pebble.directory,
                "acme_email": "postmaster@example.test",
                "acme_ca_bundle": str(bundle),
                **extra,
            }
            inventory = write_inventory(
                tmp / "vagrant.py",
                {"vagrant": [(host.address, data)], **{g: [host.address] for g in groups}},
            )
            started = time.monotonic()
            first = pyinfra(source, inventory, environ, "--diff")
            print(
                f"ACME deploy ({'+'.join(groups) or 'every role'}): "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
            if first.returncode != 0:
                pytest.fail(f"deploy failed:\n{failure_summary(first)}\n{pebble.log()}")
            yield host, source, inventory, environ, roots, pebble
        finally:
            pebble.stop()


def until_renewed(serials, before: set[str], timeout: float = 30) -> set[str]:
    """Poll `serials()` (the serial numbers the host's servers serve) until every server serves
    one new certificate: the deploy hook's reloads are asynchronous (nginx's old workers may
    still answer a connection made right after it), so the new one is served within moments."""
    deadline = time.monotonic() + timeout
    while True:
        after = serials()
        if len(after) == 1 and after != before:
            return after
        assert time.monotonic() < deadline, f"still served after the renewal: {after}"
        time.sleep(1)


def force_renewal(host: TestHost, serials: Callable[[], set[str]]) -> set[str]:
    """Renew as certbot.timer does (`certbot renew`, with what certbot kept from the first
    issuance: the deploy hook, and the way the challenge is answered), forced because the
    certificate is days old, not due; then wait until every server `serials()` reads serves the
    new one, and check that certbot.timer stays enabled. The serials served after."""
    before = serials()
    host.run("certbot renew --force-renewal --no-random-sleep-on-renew -q", check=True)
    after = until_renewed(serials, before)
    assert host.run("systemctl is-enabled certbot.timer").stdout.strip() == "enabled"
    return after


def served(address: str, port: int, name: str, roots: Path, starttls: bool = False) -> dict:
    """The certificate a server at `address` shows for `name`, verified against `roots`
    (SMTP: after EHLO and STARTTLS, spoken here: smtplib would check the address, not `name`)."""
    context = ssl.create_default_context(cafile=str(roots))
    with socket.create_connection((address, port), timeout=20) as raw:
        if starttls:
            replies = raw.makefile("rb")

            def reply() -> bytes:
                while (line := replies.readline())[3:4] == b"-":
                    pass
                return line

            assert reply().startswith(b"220")
            raw.sendall(b"EHLO client.example.test\r\n")
            assert reply().startswith(b"250")
            raw.sendall(b"STARTTLS\r\n")
            assert reply().startswith(b"220")
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert()
