"""python -m tests.deploy.testhost build|shell PACKAGE... (by hand: build, or boot and wait)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys

from tests.deploy.testhost import boot_test_host, ensure_image, ensure_tools


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("build", "shell"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_tools()
    if argv[0] == "build":
        image = ensure_image(argv[1:])
        print((image.path / "manifest.json").read_text())
        return 0
    with boot_test_host(f"sh{os.getpid() % 100000}", argv[1:]) as host:
        print(f"ssh {shlex.join(host.ssh_args())} root@{host.address}")
        with contextlib.suppress(KeyboardInterrupt):
            input("Enter (or Ctrl-C) powers it off. ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
