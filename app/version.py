"""The installed distribution's version, reported by /health and the OpenAPI document."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("emailservice")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"
