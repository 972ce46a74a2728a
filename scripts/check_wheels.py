"""Check that every pin of the locks installs on each supported Debian release's Python.

    python scripts/check_wheels.py        (run by `make lock`, after resolving)

For each Python of tasks.release.PYTHONS (Debian 13's 3.13 and Debian 12's 3.11), downloads
requirements.lock and requirements-build.lock exactly as a deploy does (tasks.release.target:
wheels only, hash-checked, except the pure-Python SDIST_ONLY pins) into a scratch directory.
A pin with no wheel for one of the Pythons, or whose wheel's hash is missing from the lock, makes
pip fail and this script exit non-zero, naming the Python.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import release  # noqa: E402


def main() -> int:
    for python in release.PYTHONS:
        with tempfile.TemporaryDirectory() as scratch:
            for lock in (release.BUILD_LOCK, release.LOCK):
                try:
                    release.download(lock, Path(scratch), python)
                except SystemExit as failure:
                    print(f"{lock.name}: not installable on Python {python}:\n{failure}")
                    return 1
            count = len(list(Path(scratch).iterdir()))
        print(f"Python {python}: every pin has a file ({count}), hashes match the locks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
