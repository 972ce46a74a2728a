"""Command line: `python -m devstack up|down|env|status|prune|install` (see --help)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from devstack import packages
from devstack.errors import StackError
from devstack.stack import Stack, StackInfo, prune


def summary(info: StackInfo) -> str:
    """A short human description of a running stack."""
    width = max(len(u) for u in info.users) if info.users else 0
    users = "\n".join(f"    {email:<{width}}  {pw}" for email, pw in sorted(info.users.items()))
    return f"""\
stack {info.name} ({"persistent" if info.persistent else "throwaway"}) in {info.state_dir}
  postgres    {info.database_url}  ({info.postgres_mode})
  redis       {info.redis_url}  ({info.redis_mode})
  imap        {info.host}:{info.imap_port} (STARTTLS)   imaps {info.host}:{info.imaps_port}
  smtp (MX)   {info.host}:{info.smtp_port}
  submission  {info.host}:{info.submission_port} (STARTTLS)
  submissions {info.host}:{info.submissions_port} (TLS)
  lmtp        {info.host}:{info.lmtp_port}
  CA file     {info.ca_file}
  env file    {info.state_dir}/env
  logs        {info.log_dir}
  users ({info.mail_domain}):
{users}"""


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line arguments."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the stack (what is not running yet)"),
        ("down", "stop the stack"),
        ("env", "print the DATABASE_URL/REDIS_URL lines"),
        ("status", "show what is running"),
        ("prune", "remove throwaway stacks whose test run died"),
        ("install", "install the servers' Debian packages when missing (as root)"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name not in ("prune", "install"):
            cmd.add_argument("--name", required=True, help="stack name, e.g. dev")
        cmd.add_argument(
            "--root", default=".stack", help="directory holding stack state (default .stack)"
        )
        if name == "up":
            cmd.add_argument(
                "--persistent",
                action="store_true",
                help="keep data across down/up (default: throwaway, removed by down)",
            )
        if name == "install":
            cmd.add_argument(
                "--test-tools", action="store_true", help="also what the tests drive (chromium)"
            )
            cmd.add_argument(
                "--bench-tools",
                action="store_true",
                help="also the benchmarks' comparators (isync's mbsync, wrk)",
            )
        if name == "down":
            cmd.add_argument(
                "--purge", action="store_true", help="also delete a persistent stack's data"
            )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one line on stderr and exit status 1."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="devstack: %(message)s", stream=sys.stderr)
    root = Path(args.root)
    try:
        if args.command == "install":
            packages.ensure(test_tools=args.test_tools, bench_tools=args.bench_tools)
            tools = (", Chromium, Vagrant" if args.test_tools else "") + (
                ", mbsync, wrk" if args.bench_tools else ""
            )
            print(f"PostgreSQL, Redis, Dovecot, Postfix, openssl{tools}: installed")
        elif args.command == "prune":
            removed = prune([root])
            print(
                f"removed {len(removed)} orphaned stack(s)"
                + (f": {', '.join(removed)}" if removed else "")
            )
        elif args.command == "up":
            # owner_pid=0: the stack outlives this command and lives until `down`.
            info = Stack(args.name, root, persistent=args.persistent, owner_pid=0).start()
            print(summary(info))
        elif args.command == "down":
            if Stack.load(args.name, root) is None:
                print(f"devstack: stack {args.name} is not set up under {root}", file=sys.stderr)
                return 0
            Stack(args.name, root).stop(purge=True if args.purge else None)
            print(f"stack {args.name} stopped")
        else:
            loaded = Stack.load(args.name, root)
            if loaded is None:
                print(
                    f"devstack: stack {args.name} is not set up under {root} "
                    f"(start it with: python -m devstack up --name {args.name})",
                    file=sys.stderr,
                )
                return 1
            if args.command == "env":
                print("".join(f"{k}={v}\n" for k, v in loaded.env().items()), end="")
            else:
                running = Stack(args.name, root).status()
                print(summary(loaded))
                print(
                    "  running:   "
                    + "  ".join(f"{k}={'yes' if v else 'NO'}" for k, v in running.items())
                )
                return 0 if all(running.values()) else 1
    except (StackError, ValueError, OSError) as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("devstack: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
