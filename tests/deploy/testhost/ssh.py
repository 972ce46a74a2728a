"""Reaching a test host: its per-run SSH key, ssh's arguments, commands run over SSH.

Root logs in with an ed25519 key made for each run; the host gets its public half at boot (see
boot.py). ssh runs with `-F /dev/null`: no user config, no agent, no forwarded LANG, and host
keys are not checked (each boot is a new host at a reused address).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from tests.deploy.testhost.machine import ENV, TestHostError, run, tail


def make_key(key: Path, comment: str) -> Path:
    """A new key pair at `key` (private half 0600); returns an authorized_keys file beside it
    holding the public half, 0600, for the host to trust."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key])
    key.chmod(0o600)
    authorized = key.parent / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    return authorized


class SSHTarget:
    """Commands on a host over SSH as root with the run's key (the base of TestHost)."""

    def __init__(self, name: str, ssh_key: Path) -> None:
        self.name = name
        self.address = ""
        self.ssh_user = "root"
        self.ssh_key = ssh_key
        self.ssh_options = [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "ConnectTimeout=10",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ]

    def ssh_args(self, connect_timeout: float | None = None) -> list[str]:
        """ssh's arguments before the command: no user config, the run's key, the options."""
        args = ["-F", "/dev/null", "-i", str(self.ssh_key)]
        for option in self.ssh_options:
            if connect_timeout is not None and option.startswith("ConnectTimeout="):
                option = f"ConnectTimeout={max(1, round(connect_timeout))}"
            args += ["-o", option]
        return args

    def ssh_command(self, command: str, connect_timeout: float | None = None) -> list[str]:
        """The full ssh argv that runs command (a shell string) on the host."""
        return ["ssh", *self.ssh_args(connect_timeout), f"{self.ssh_user}@{self.address}", command]

    def run(
        self,
        command: str,
        *,
        check: bool = False,
        timeout: float | None = 600,
        input: str | None = None,
        connect_timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over SSH (ssh itself failing gives returncode 255)."""
        result = subprocess.run(
            self.ssh_command(command, connect_timeout),
            env=ENV,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise TestHostError(
                f"on {self.name}: {command!r} exited with {result.returncode}\n"
                f"{tail(result.stdout + result.stderr)}"
            )
        return result

    def pyinfra_host_data(self) -> dict:
        """Host data for pyinfra's SSH connector: `(host.address, host.pyinfra_host_data())`."""
        return {
            "ssh_user": self.ssh_user,
            "ssh_key": str(self.ssh_key),
            "ssh_strict_host_key_checking": "no",
            "ssh_known_hosts_file": "/dev/null",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }

    def journal(self, unit: str, lines: int = 200) -> str:
        """The unit's last journal lines."""
        cmd = f"journalctl -u {shlex.quote(unit)} --no-pager -n {int(lines)}"
        result = self.run(cmd, timeout=60)
        return result.stdout + result.stderr

    def wait_for_unit(self, unit: str, timeout: float = 60) -> None:
        """Wait until the unit is active; raise with its journal if it fails or times out."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run(f"systemctl is-active {shlex.quote(unit)}", timeout=30).stdout
            state = state.strip()
            if state == "active":
                return
            if state == "failed":
                break
            time.sleep(0.3)
        raise TestHostError(f"{unit} on {self.name} is {state or 'unknown'}:\n{self.journal(unit)}")
