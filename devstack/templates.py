"""The deploy's templates (templates/<service>/*.j2), rendered for the local stack.

The environment is the one pyinfra's files.template renders with on a host (StrictUndefined, the
trailing newline kept), so a template renders the same way here and there; only the variables
differ.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

_jinja = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def render(name: str, **variables: object) -> str:
    """templates/<name> filled with `variables` (a missing one is an error, not an empty string)."""
    return _jinja.get_template(name).render(**variables)
