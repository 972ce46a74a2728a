"""python -m tests.deploy.testhost build|shell [--release trixie|bookworm] PACKAGE...
(by hand: build the image, or boot a host and wait)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex

from tests.deploy.testhost import (
    DEFAULT_RELEASE,
    RELEASES,
    boot_test_host,
    ensure_image,
    ensure_tools,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.testhost", description=__doc__)
    parser.add_argument("command", choices=["build", "shell"])
    parser.add_argument("--release", choices=RELEASES, default=DEFAULT_RELEASE)
    parser.add_argument("packages", nargs="*", metavar="PACKAGE")
    args = parser.parse_intermixed_args(argv)
    ensure_tools()
    if args.command == "build":
        image = ensure_image(args.packages, args.release)
        print((image.path / "manifest.json").read_text())
        return 0
    name = f"sh{os.getpid() % 100000}"
    with boot_test_host(name, args.packages, release=args.release) as host:
        print(f"ssh {shlex.join(host.ssh_args())} root@{host.address}")
        with contextlib.suppress(KeyboardInterrupt):
            input("Enter (or Ctrl-C) powers it off. ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
