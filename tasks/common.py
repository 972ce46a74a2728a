"""Helpers every step uses: templates from templates/<service>/, restarts that wait for changes."""

from __future__ import annotations

from pathlib import Path

from jinja2 import FileSystemLoader
from pyinfra.operations import files

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def template(src: str, dest: str, *, user="root", group="root", mode="644", **data):
    """Render templates/<src> to `dest`; includes resolve under templates/ whatever the cwd."""
    return files.template(
        name=f"Render {dest}",
        src=str(TEMPLATES / src),
        dest=dest,
        user=user,
        group=group,
        mode=mode,
        jinja_env_kwargs={"loader": FileSystemLoader(str(TEMPLATES))},
        **data,
    )


def changed(*ops) -> bool:
    """Planning-time view of whether any of `ops` will change something (pyinfra 3)."""
    return any(op.will_change for op in ops)
