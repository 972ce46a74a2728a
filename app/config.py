"""The one settings object, read from the environment and an optional `.env` file.

The names, defaults and rules are the contract in shared/API.md ("CLI"). Every value is
checked once, at start-up, and a bad one raises `ConfigError` naming the setting, so the CLI
can print a single line instead of a traceback. Secrets are kept out of `repr()`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MB = 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A setting is missing or malformed; `str()` is one line that names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name


def _database_url(name: str, raw: str) -> str:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(name, "is not a database URL (expected postgresql://user@host:port/db)")
    # The libpq form is what people paste; SQLAlchemy needs the driver named.
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+psycopg")
    else:
        raise ConfigError(name, f"must be a postgresql:// URL, not {url.drivername}://")
    if not url.host and not url.query.get("host"):
        raise ConfigError(name, "has no host")
    if not url.database:
        raise ConfigError(name, "has no database name")
    return url.render_as_string(hide_password=False)


def _redis_url(name: str, raw: str) -> str:
    from redis.connection import parse_url

    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(name, "must be a redis://, rediss:// or unix:// URL")
    try:
        parse_url(raw)
    except ValueError as exc:
        raise ConfigError(name, f"is malformed: {exc}")
    return raw


def _jwt_secret(name: str, raw: str) -> str:
    if len(raw) < 32:
        raise ConfigError(name, "must be at least 32 characters")
    return raw


def _encryption_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(name, "must hold at least one key")
    for position, key in enumerate(keys, start=1):
        try:
            ok = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
        except (binascii.Error, ValueError, UnicodeEncodeError):
            ok = False
        if not ok:
            raise ConfigError(
                name,
                f"key {position} is not 32 bytes of URL-safe base64 "
                "(generate one with `emailservice keys generate`)",
            )
    return keys


def _int(low: int, high: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be an integer, not {raw!r}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(name, f"must be {bounds}, not {value}")
        return value

    return parse


def _host(name: str, raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ConfigError(name, f"is not a host name or address: {raw!r}")
    return raw


def _ca_file(name: str, raw: str) -> str:
    if raw and not Path(raw).is_file():
        raise ConfigError(name, f"names no readable file: {raw}")
    return raw


def _log_level(name: str, raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(name, f"must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level


# name -> (attribute, parser, default or None when required). Order is the order of checks.
SETTINGS: dict[str, tuple[str, Callable[[str, str], Any], str | None]] = {
    "DATABASE_URL": ("database_url", _database_url, None),
    "REDIS_URL": ("redis_url", _redis_url, None),
    "JWT_SECRET": ("jwt_secret", _jwt_secret, None),
    "ENCRYPTION_KEY": ("encryption_keys", _encryption_keys, None),
    "API_HOST": ("api_host", _host, "127.0.0.1"),
    "API_PORT": ("api_port", _int(1, 65535), "5000"),
    "WAITRESS_THREADS": ("waitress_threads", _int(1, 256), "8"),
    "JWT_TTL_SECONDS": ("jwt_ttl_seconds", _int(60), "3600"),
    "RATE_LIMIT_REQUESTS_PER_MINUTE": ("rate_limit_per_minute", _int(1), "60"),
    "RATE_LIMIT_REQUESTS_PER_HOUR": ("rate_limit_per_hour", _int(1), "1000"),
    "LOGIN_RATE_LIMIT_PER_MINUTE": ("login_rate_limit_per_minute", _int(1), "10"),
    "SYNC_INTERVAL_SECONDS": ("sync_interval_seconds", _int(10), "300"),
    "MAX_MESSAGE_BYTES": ("max_message_bytes", _int(1024), str(25 * MB)),
    "LOG_LEVEL": ("log_level", _log_level, "INFO"),
    "MAIL_TLS_CA_FILE": ("mail_tls_ca_file", _ca_file, ""),
    "TRUSTED_PROXIES": ("trusted_proxies", _int(0, 10), "0"),
    "SYNC_BATCH_MESSAGES": ("sync_batch_messages", _int(1, 5000), "200"),
    "SYNC_JOB_MAX_MESSAGES": ("sync_job_max_messages", _int(1), "5000"),
    "SEND_MAX_ATTEMPTS": ("send_max_attempts", _int(1, 100), "8"),
    "SEND_RETRY_SECONDS": ("send_retry_seconds", _int(1, 3600), "30"),
}


@dataclass(frozen=True)
class Settings:
    """Validated service settings; build with `Settings.load()` or `Settings.from_mapping()`."""

    database_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    jwt_secret: str = field(repr=False)
    encryption_keys: tuple[str, ...] = field(repr=False)
    api_host: str = "127.0.0.1"
    api_port: int = 5000
    waitress_threads: int = 8
    jwt_ttl_seconds: int = 3600
    rate_limit_per_minute: int = 60
    rate_limit_per_hour: int = 1000
    login_rate_limit_per_minute: int = 10
    sync_interval_seconds: int = 300
    max_message_bytes: int = 25 * MB
    log_level: str = "INFO"
    mail_tls_ca_file: str = ""
    trusted_proxies: int = 0
    sync_batch_messages: int = 200
    sync_job_max_messages: int = 5000
    send_max_attempts: int = 8
    send_retry_seconds: int = 30

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Validate settings from one mapping of environment-style names to strings."""
        parsed: dict[str, Any] = {}
        for name, (attribute, parse, default) in SETTINGS.items():
            raw = values.get(name)
            raw = raw.strip() if raw is not None else ""
            if not raw:
                if default is None:
                    raise ConfigError(name, "is required but not set")
                raw = default
            parsed[attribute] = parse(name, raw) if raw else raw
        return cls(**parsed)

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, dotenv_path: str | Path = ".env"
    ) -> Settings:
        """Read `.env` (when present) overlaid by the environment, which wins."""
        values: dict[str, str] = {}
        path = Path(dotenv_path)
        try:
            present = path.is_file()
        except OSError:  # e.g. a working directory this user may not read: no .env there
            present = False
        if present:
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password masked, for messages and logs."""
        url: URL = make_url(self.database_url)
        return url.render_as_string(hide_password=True)
