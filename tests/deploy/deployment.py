"""Deploying onto booted test hosts, and talking to what was deployed.

Deploys run from a snapshot of the working tree, not from the tree itself: a release is named by
the content of its wheel, so an edit made by someone else during a test run would otherwise turn
a "second deploy changes nothing" into a new release. A snapshot is also how a test makes a
changed release on purpose (a new version number).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.testhost import TestHost
from tests.smtp_peer import SmtpPeer

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
# Never copied: VCS data, environments, caches and, above all, any inventories/secrets/.
_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".stack",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
    "secrets",
    "results",
)


def snapshot(dest: Path, version: str | None = None) -> Path:
    """A copy of the working tree to deploy from; `version` replaces the package's version (a
    new release). build/ is shared, so dependencies' wheels are downloaded once."""
    shutil.copytree(ROOT, dest, ignore=_IGNORE, symlinks=True)
    (ROOT / "build").mkdir(exist_ok=True)
    (dest / "build").symlink_to(ROOT / "build")
    if version is not None:
        pyproject = dest / "pyproject.toml"
        text, count = re.subn(
            r'^version = ".*"$', f'version = "{version}"', pyproject.read_text(), flags=re.M
        )
        assert count == 1, "no version line in pyproject.toml"
        pyproject.write_text(text)
    return dest


def package_version(source: Path) -> str:
    [version] = re.findall(r'^version = "(.*)"$', (source / "pyproject.toml").read_text(), re.M)
    return version


def write_inventory(path: Path, groups: dict[str, list]) -> Path:
    """An inventory module: {group: [(address, host data) or address]}, as a user writes one."""
    path.write_text("".join(f"{group} = {hosts!r}\n" for group, hosts in groups.items()))
    return path


def pyinfra(
    source: Path, inventory: Path, environ: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    """`pyinfra -y INVENTORY deploy.py ARGS` from `source`, as `make deploy` runs it."""
    return subprocess.run(
        [
            PYINFRA,
            "-y",
            "--group-data",
            "inventories/group_data",
            str(inventory),
            "deploy.py",
            *args,
        ],
        cwd=source,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=1800,
    )


def failure_summary(run: subprocess.CompletedProcess) -> str:
    """What a failed pyinfra run said about its errors (its tables are long), then its tail."""
    lines = (run.stdout + run.stderr).splitlines()
    errors = [
        "\n".join(lines[max(0, i - 3) : i + 8])
        for i, line in enumerate(lines)
        if "rror" in line and not line.lstrip().startswith(("+", "-")) and "|" not in line
    ]
    return "\n...\n".join(errors[:8]) + "\n--- tail ---\n" + "\n".join(lines[-30:])


def changed_operations(run: subprocess.CompletedProcess) -> list[str]:
    """Names of the operations a `--json` run changed something with."""
    results = json.loads(run.stdout)["results"]
    return [op["name"] for op in results["operations"] if op["success"]]


def tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def api(
    address: str,
    ca: Path,
    path: str,
    *,
    token: str | None = None,
    body: dict | None = None,
    method: str | None = None,
    timeout: float = 10,
) -> tuple[int, dict | None]:
    """One request to the API through nginx (HTTPS): (status, JSON body or None); status 0 when
    no answer came at all."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"https://{address}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, context=tls(ca), timeout=timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())
    except OSError:
        return 0, None


def _json(raw: bytes) -> dict | None:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def wait_for_health(address: str, ca: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while api(address, ca, "/health")[0] != 200:
        assert time.monotonic() < deadline, f"/health on {address} did not answer 200"
        time.sleep(0.5)


@dataclass
class Deployment:
    """A booted host deployed from `source`; secrets are kept out of reprs (pytest prints a
    failing test's arguments)."""

    host: TestHost
    source: Path
    inventory: Path
    ca: Path
    secrets: dict[str, str] = field(repr=False)
    first: subprocess.CompletedProcess = field(repr=False)
    second: subprocess.CompletedProcess = field(repr=False)
    release: str = "trixie"  # the host's Debian release (codename)
    # Where the host's Postfix delivers mail for conftest.PEER_DOMAIN (not every Deployment has it).
    peer: SmtpPeer | None = field(default=None, repr=False)

    @property
    def environ(self) -> dict[str, str]:
        return {f"EMAILSERVICE_{k}": v for k, v in self.secrets.items()}

    @property
    def address(self) -> str:
        return self.host.address

    def deploy(self, source: Path | None = None, *args: str) -> subprocess.CompletedProcess:
        return pyinfra(source or self.source, self.inventory, self.environ, *args)

    def api(self, path: str, **kwargs) -> tuple[int, dict | None]:
        return api(self.host.address, self.ca, path, **kwargs)

    def login(self, tenant: str, username: str, password: str) -> str:
        status, body = self.api(
            "/auth/login", body={"tenant": tenant, "username": username, "password": password}
        )
        assert status == 200, (status, body)
        return body["access_token"]
