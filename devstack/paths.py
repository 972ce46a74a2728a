"""Where a stack keeps its state: `<root>/<name>`, or a world-traversable place it links to."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

RELOCATED_BASE = Path("/var/tmp/emailservice-stack")
# Unix socket paths are limited to 107 bytes; the longest socket we create sits about 40 bytes
# below the state dir (Dovecot's base_dir/login/...), so longer state dirs move to the short base.
MAX_STATE_DIR_LEN = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(name: str) -> str:
    """Return `name` when it is usable in paths, database names and instance names."""
    if not NAME_RE.match(name):
        raise ValueError(
            f"stack name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def link_path(name: str, root: Path) -> Path:
    """The path callers see for a stack's state: `<root>/<name>` (absolute, not resolved)."""
    return Path(os.path.abspath(root)) / name


def traversable(path: Path) -> bool:
    """True when every directory from / down to `path` is world-executable."""
    path = path.resolve()
    for directory in [path, *path.parents]:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return False
        except FileNotFoundError:
            continue
    return True


def relocated_dir(name: str, root: Path) -> Path:
    """The short world-traversable place for a stack whose `<root>` is private or too deep."""
    digest = hashlib.sha1(str(Path(os.path.abspath(root)).resolve()).encode()).hexdigest()[:8]
    return RELOCATED_BASE / f"{name[:20]}-{digest}"


def prepare(name: str, root: Path) -> Path:
    """Create (or find) a stack's state dir; return its real path."""
    link = link_path(name, root)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        target = link.resolve()
        target.mkdir(parents=True, exist_ok=True, mode=0o755)
        return target
    if link.is_dir():
        return link.resolve()
    real = link.parent.resolve() / name
    if traversable(link.parent) and len(str(real)) <= MAX_STATE_DIR_LEN:
        real.mkdir(mode=0o755)
        os.chmod(real, 0o755)
        return real
    target = relocated_dir(name, root)
    RELOCATED_BASE.mkdir(parents=True, exist_ok=True, mode=0o755)
    target.mkdir(exist_ok=True, mode=0o755)
    os.chmod(target, 0o755)
    link.symlink_to(target, target_is_directory=True)
    return target


def existing(name: str, root: Path) -> Path | None:
    """The real state dir of a stack if it exists, without creating anything."""
    link = link_path(name, root)
    return link.resolve() if link.is_dir() else None


def remove(link: Path) -> None:
    """Delete a stack's state: `<root>/<name>`, and the relocated directory it links to."""
    if link.is_symlink():
        target = link.resolve()
        link.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif link.is_dir():
        shutil.rmtree(link, ignore_errors=True)
