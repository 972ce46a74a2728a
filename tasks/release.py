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

from tasks.debian import SUPPORTED

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# setuptools new enough to build the few sdist-only dependencies on the target, offline.
BUILD_LOCK = ROOT / "requirements-build.lock"
BUILD = ROOT / "build" / "release"
# The CPython of each supported Debian release (3.13 and 3.11).
PYTHONS = tuple(sorted({release.python for release in SUPPORTED.values()}))
# Pinned packages that publish only an sdist: pure Python, built on the target offline with the
# build lock's setuptools. Every other pin must have a wheel for each Python below, or the
# download (and `make lock`'s check) fails rather than leave a host to compile C.
SDIST_ONLY = ("crontab",)


def target(python: str) -> list[str]:
    """pip's platform arguments for a Debian host's CPython `python` ("3.13") on x86_64, glibc
    2.36 or newer (Debian 12's; Debian 13 has 2.41)."""
    abi = "cp" + python.replace(".", "")
    platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
    platforms += ["manylinux_2_34_x86_64", "any"]
    return [
        "--python-version",
        python,
        "--implementation",
        "cp",
        *(arg for a in (abi, "abi3", "none") for arg in ("--abi", a)),
        *(arg for p in platforms for arg in ("--platform", p)),
        "--only-binary=:all:",
        *(f"--no-binary={name}" for name in SDIST_ONLY),
    ]


def download(lock: Path, dest: Path, python: str) -> None:
    """Every pin of `lock` for `python`, hash-checked, into dest (exits with pip's error)."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            *target(python),
            "--require-hashes",
            "-r",
            str(lock),
            "-d",
            str(dest),
        ]
    )


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
    pythons = " ".join(PYTHONS).encode()
    lock_hash = hashlib.sha256(LOCK.read_bytes() + BUILD_LOCK.read_bytes() + pythons).hexdigest()
    lock_hash = lock_hash[:16]
    marker = deps / f".lock-{lock_hash}"
    if not marker.exists():
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        # Wheels for the Python of every supported Debian release (one wheelhouse serves both:
        # pip on the host picks its own); SDIST_ONLY's sdists, which the target builds offline
        # with the build lock's setuptools, hash-checked.
        for python in PYTHONS:
            for lock in (BUILD_LOCK, LOCK):
                download(lock, deps, python)
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
