"""`make dev`: the persistent dev stack, migrations, then API (reloading), worker and scheduler.

    python -m devstack.dev            # start; Ctrl-C (or SIGTERM) stops everything it started
    python -m devstack.dev --stop     # from another terminal: the same stop

The stack is `Stack("dev", ".stack", persistent=True)`: data, users and passwords survive
restarts. Its env file (.stack/dev/env) also gets stable JWT_SECRET and ENCRYPTION_KEY values,
so `emailservice ...` commands run with that file see the same settings as `make dev`.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack import seed
from devstack.__main__ import summary
from devstack.errors import StackError
from devstack.proc import kill, pid_alive, wait_until
from devstack.stack import Stack, StackInfo

NAME = "dev"
# The service's processes, each run as `python -m app.cli ...` with the stack's settings.
PROCESSES = {
    "api": ["serve", "--reload"],
    "worker": ["worker"],
    "scheduler": ["scheduler"],
    "idle": ["idle"],
}


def mail_pairs(info: StackInfo) -> list[str]:
    """The HOST:PORT of every mail listener of a stack: exactly what its settings allow in
    ALLOWED_PRIVATE_HOSTS (never all of loopback, where its PostgreSQL and Redis listen)."""
    ports = (
        info.imap_port,
        info.imaps_port,
        info.submission_port,
        info.submissions_port,
        info.smtp_port,
    )
    return [f"{info.host}:{port}" for port in ports if port]


def dev_settings(info: StackInfo) -> dict[str, str]:
    """Settings the dev stack adds to its env file: secrets made once, then kept (tokens
    survive restarts), the stack's CA so accounts on its Dovecot/Postfix verify over TLS, and
    its own mail servers as the only private hosts accounts may use."""
    settings = {
        "MAIL_TLS_CA_FILE": info.ca_file,
        "ALLOWED_PRIVATE_HOSTS": ",".join(mail_pairs(info)),
    }
    if "JWT_SECRET" not in info.extra_env or "ENCRYPTION_KEY" not in info.extra_env:
        settings["JWT_SECRET"] = secrets.token_urlsafe(48)
        settings["ENCRYPTION_KEY"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return settings


DEMO = """\
Demo: tenant "{tenant}", user "{user}", password in .stack/dev/env (DEMO_PASSWORD); the account
{mailbox} on the local Dovecot has sample mail and is syncing. Ready to paste:
{curl}
More: `set -a; . .stack/dev/env; set +a` then `.venv/bin/emailservice --help`."""


def app_env(info: StackInfo) -> dict[str, str]:
    """This environment plus the stack's settings (which win: they name the stack's servers)."""
    return {**os.environ, **info.env()}


def run_dev(root: Path) -> int:
    """Start everything, wait until Ctrl-C/SIGTERM or a process dies, then stop everything."""
    stack = Stack(NAME, root, persistent=True)
    info = stack.start()
    info = stack.set_env({**dev_settings(info), **seed.demo_password(info)})
    state = Path(info.state_dir)
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("devstack: migrating the database ...", file=sys.stderr, flush=True)
        migrate = subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"], env=app_env(info), check=False
        )
        if migrate.returncode != 0:
            raise StackError("`emailservice db upgrade` failed (see above)")
        for name, args in PROCESSES.items():
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                env=app_env(info),
                stdin=subprocess.DEVNULL,
            )
        (state / "dev.json").write_text(
            json.dumps({"pid": os.getpid(), "children": {k: p.pid for k, p in children.items()}})
        )
        api = (
            f"http://{os.environ.get('API_HOST', '127.0.0.1')}:{os.environ.get('API_PORT', '5000')}"
        )
        token, account_id = seed.seed(info, app_env(info), api, info.extra_env["DEMO_PASSWORD"])
        demo = DEMO.format(
            tenant=seed.TENANT,
            user=seed.USER,
            mailbox=seed.MAILBOX,
            curl=seed.curl_lines(api, token, account_id),
        )
        print(
            f"{summary(info)}\n  API         {api}  (docs: {api}/docs)\n{demo}\n"
            "Ctrl-C or `make stop` stops everything.",
            flush=True,
        )
        while not stopping:
            dead = [name for name, proc in children.items() if proc.poll() is not None]
            if dead:
                print(f"devstack: {', '.join(dead)} exited; stopping the rest", file=sys.stderr)
                return 1
            time.sleep(0.3)
        return 0
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in children.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        (state / "dev.json").unlink(missing_ok=True)
        stack.stop()  # persistent: the processes stop, the data stays
        print("devstack: dev stack stopped (data kept in .stack/dev)", file=sys.stderr)


def stop_dev(root: Path) -> int:
    """Stop a running `make dev` from elsewhere, or just the stack when nothing else runs."""
    info = Stack.load(NAME, root)
    if info is None:
        print(f"devstack: no dev stack under {root}", file=sys.stderr)
        return 0
    try:
        pid = json.loads((Path(info.state_dir) / "dev.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        pid = 0
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)  # it stops its children and the stack itself
        if not wait_until(lambda: not pid_alive(pid), 60, 0.2):
            kill(pid)
    Stack(NAME, root).stop()  # whatever is still running (nothing when the above worked)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Start (default) or --stop the dev environment; errors are one line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m devstack.dev", description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop a running `make dev`")
    parser.add_argument("--root", default=".stack", help="stack state directory (default .stack)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr)
    try:
        return stop_dev(Path(args.root)) if args.stop else run_dev(Path(args.root))
    except (StackError, OSError, ValueError) as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
