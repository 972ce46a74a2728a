"""The one exception the stack raises: its message is a single line meant for people."""

from __future__ import annotations


class StackError(RuntimeError):
    """Something in the local stack could not be set up, started or stopped."""


def client_module(name: str):  # -> ModuleType
    """Import a client library (psycopg, redis) lazily, as a StackError when it is not installed."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        package = {"psycopg": "psycopg[binary]"}.get(name, name)
        raise StackError(
            f"the Python package {name} is missing here ({package}): "
            "run devstack from the project's "
            f"virtualenv, or pip install '{package}'"
        ) from None
