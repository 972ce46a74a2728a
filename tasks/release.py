"""The release: the service's wheel and every dependency's, built on the deploying machine.

Hosts install from this wheelhouse with `--no-index --require-hashes`, so they need no access to
PyPI and every host runs exactly the same code. The release is named by the content hash of
the wheel and the lock file: the wheel is built with SOURCE_DATE_EPOCH fixed, so the same
source gives the same bytes, the same name, and a second deploy changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# setuptools new enough to build the few sdist-only dependencies on the target, offline.
BUILD_LOCK = ROOT / "requirements-build.lock"
BUILD = ROOT / "build" / "release"
# Debian 12: CPython 3.11 on x86_64, glibc 2.36.
TARGET = [
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_34_x86_64",
    "--platform",
    "any",
]
# Wheels are zip files: their timestamps come from here, not from the clock.
SOURCE_DATE_EPOCH = "315532800"


@dataclass(frozen=True)
class Release:
    name: str  # content hash
    wheelhouse: Path  # the app's wheel, every dependency's wheel, and the lock file


def _run(args: list[str], **kwargs) -> None:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... failed:\n{result.stdout}\n{result.stderr}")


@cache
def build() -> Release:
    """Build (once per deploy run) the wheel and gather the locked dependencies' wheels."""
    deps = BUILD / "deps"
    lock_hash = hashlib.sha256(LOCK.read_bytes() + BUILD_LOCK.read_bytes()).hexdigest()[:16]
    marker = deps / f".lock-{lock_hash}"
    if not marker.exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        # Wheels for the target where they exist; a few pure-Python packages publish only an
        # sdist, which the target builds offline with the build lock's setuptools, hash-checked.
        for lock in (BUILD_LOCK, LOCK):
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    *TARGET,
                    "--require-hashes",
                    "-r",
                    str(lock),
                    "-d",
                    str(deps),
                ]
            )
        marker.touch()

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        # A clean copy: stale build/ or egg-info leftovers must not leak into the wheel.
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                ".stack",
                "build",
                "dist",
                "*.egg-info",
                "__pycache__",
                ".hypothesis",
                ".pytest_cache",
                "inventories",
                "node_modules",
            ),
        )
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(Path(tmp) / "dist"),
                str(source),
            ],
            env=env,
        )
        [wheel] = (Path(tmp) / "dist").glob("emailservice-*.whl")
        digest = hashlib.sha256(
            wheel.read_bytes() + LOCK.read_bytes() + BUILD_LOCK.read_bytes()
        ).hexdigest()[:12]
        wheelhouse = BUILD / digest
        if not wheelhouse.exists():
            staging = BUILD / f".{digest}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(deps, staging, ignore=shutil.ignore_patterns(".lock-*"))
            shutil.copy2(wheel, staging / wheel.name)
            shutil.copy2(LOCK, staging / "requirements.lock")
            shutil.copy2(BUILD_LOCK, staging / "requirements-build.lock")
            staging.rename(wheelhouse)
    return Release(name=digest, wheelhouse=wheelhouse)
