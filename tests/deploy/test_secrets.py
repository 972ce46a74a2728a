"""`secret_file` on a real (local) pyinfra host: the bytes never sit in a file another local
user could open, and no name on their way is predictable (level 1: no test host needed)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops

from tasks.secrets import secret_file


def deploy_secret(path: Path, content: str, mode: str) -> list[dict]:
    """Run secret_file through pyinfra on @local; what happened, step by step: each command
    run, and at the upload the mode of the file the bytes go to and of the upload's temporary
    directory, seen from outside, just before any byte is written."""
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    host = inventory.get_host("@local")
    steps: list[dict] = []
    connector = host.connector
    run_shell_command, put_file = connector.run_shell_command, connector.put_file

    def observed_command(command, **kwargs):
        raw = command.get_raw_value() if hasattr(command, "get_raw_value") else command
        steps.append({"command": str(raw)})
        return run_shell_command(command, **kwargs)

    def observed_upload(src, dest, remote_temp_filename=None, **kwargs):
        temp_dir = os.path.dirname(remote_temp_filename)
        steps.append(
            {
                "upload": dest,
                "dest_mode": stat.S_IMODE(os.stat(dest).st_mode),
                "dest_size": os.stat(dest).st_size,
                "temp_dir": temp_dir,
                "temp_dir_mode": stat.S_IMODE(os.stat(temp_dir).st_mode),
            }
        )
        return put_file(src, dest, remote_temp_filename=remote_temp_filename, **kwargs)

    connector.run_shell_command, connector.put_file = observed_command, observed_upload
    try:
        add_op(
            state,
            secret_file,
            path=str(path),
            content=content,
            user=pwd.getpwuid(os.getuid()).pw_name,
            group=grp.getgrgid(os.getgid()).gr_name,
            mode=mode,
        )
        run_ops(state)
    finally:
        disconnect_all(state)
    assert not state.failed_hosts
    return steps


def test_a_secret_file_is_never_readable_by_others_on_its_way(tmp_path):
    target = tmp_path / "service.env"
    first = deploy_secret(target, "JWT_SECRET=one\n", "640")
    assert target.read_text() == "JWT_SECRET=one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640

    [upload] = [step for step in first if "upload" in step]
    staged = Path(upload["upload"])
    # The bytes go to a staging file beside the target, which exists, empty and 0600, before
    # the first byte; through a temporary directory that is 0700 from its creation.
    assert staged.parent == tmp_path and staged != target
    assert (upload["dest_mode"], upload["dest_size"]) == (0o600, 0)
    assert upload["temp_dir_mode"] == 0o700
    # Renamed over the target once it has its owner and mode: nothing is left behind.
    commands = [step.get("command", "upload") for step in first]
    assert commands.index("upload") < commands.index(f"mv -f {staged} {target}")
    assert commands.index(f"chmod 640 {staged}") < commands.index(f"mv -f {staged} {target}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["service.env"]
    assert not os.path.exists(upload["temp_dir"])

    # A new value: other, unpredictable names (not derived from the target's path).
    second = deploy_secret(target, "JWT_SECRET=two\n", "640")
    [again] = [step for step in second if "upload" in step]
    assert again["upload"] != upload["upload"]
    assert again["temp_dir"] != upload["temp_dir"]
    assert target.read_text() == "JWT_SECRET=two\n"
    # The same value again: nothing is written at all.
    assert not [
        step for step in deploy_secret(target, "JWT_SECRET=two\n", "640") if "upload" in step
    ]
