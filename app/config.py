"""The one settings object, read from the environment and an optional `.env` file.

Each setting is declared once, as a field of `Settings` carrying its environment name, parser,
default and one-line meaning; `.env.example` and the README's table of settings are generated
from those declarations (`example_env()`, `markdown_table()`). Every value is checked once, at
start-up, and a bad one raises `ConfigError` naming the setting, so the CLI can print a single
line instead of a traceback. Secrets are kept out of `repr()`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
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
        parse_url(raw)  # type: ignore[no-untyped-call]  # redis ships no annotation for it
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


@dataclass(frozen=True)
class HostEntry:
    """One entry of ALLOWED_PRIVATE_HOSTS: a network (an address is a /32 or /128) or a host
    name (resolved when a connection is checked), and the one port it allows, or any."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    name: str | None
    port: int | None


_HOST_NAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::([^:]*))?$")


def parse_host_entry(text: str) -> HostEntry:
    """HOST, HOST:PORT, CIDR, CIDR:PORT, IPv6 (bare, no port) or [IPv6 or IPv6 CIDR]:PORT;
    ValueError saying what is wrong. Kept with the setting so a bad entry stops start-up."""
    bracketed = _BRACKETED.match(text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
        if ":" not in host:
            raise ValueError("brackets are for IPv6 addresses only")
    elif text.count(":") > 1:  # a bare IPv6 address or network: no port possible
        host, port_text = text, None
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    try:
        return HostEntry(ipaddress.ip_network(host, strict=False), None, port)
    except ValueError:
        if "/" in host or ":" in host:
            raise ValueError(f"{host!r} is not an address or network") from None
    if not _HOST_NAME.match(host):
        raise ValueError(f"{host!r} is not a host name")
    return HostEntry(None, host.rstrip(".").lower(), port)


def _host_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated entries, each HOST, HOST:PORT, CIDR, CIDR:PORT or [IPv6]:PORT; the
    outbound host policy (app.mail.policy) gives them their meaning."""
    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    for entry in entries:
        try:
            parse_host_entry(entry)
        except ValueError as exc:
            raise ConfigError(name, f"has a malformed entry {entry!r}: {exc}") from None
    return entries


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


@dataclass(frozen=True)
class Setting:
    """How one setting is read: its environment name, parser, default and meaning."""

    env: str
    parse: Callable[[str, str], Any]
    default: str | None  # as written in the environment; None: required
    help: str  # one line, for .env.example and the README's table
    secret: bool = False  # never shown: not in repr(), not in examples

    def read(self, raw: str | None) -> Any:
        """The value from the environment's text (None or blank: the default)."""
        raw = raw.strip() if raw is not None else ""
        if not raw:
            if self.default is None:
                raise ConfigError(self.env, "is required but not set")
            raw = self.default
        return self.parse(self.env, raw) if raw else raw


def setting(
    env: str,
    parse: Callable[[str, str], Any],
    default: str | None,
    help: str,
    *,
    secret: bool = False,
) -> Any:
    """A field of Settings, declared once: everything else (parsing, defaults, .env.example,
    the README's table) reads this declaration."""
    declared = Setting(env, parse, default, help, secret)
    metadata = {"setting": declared}
    if default is None:
        return field(repr=not secret, metadata=metadata)
    return field(default=declared.read(default), repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Validated service settings; build with `Settings.load()` or `Settings.from_mapping()`."""

    database_url: str = setting(
        "DATABASE_URL",
        _database_url,
        None,
        "PostgreSQL: postgresql://user:password@host:port/db (or postgresql+psycopg://...)",
        secret=True,
    )
    redis_url: str = setting(
        "REDIS_URL",
        _redis_url,
        None,
        "Redis for job queues, rate limits and counters: redis://[:password@]host:port/db",
        secret=True,
    )
    jwt_secret: str = setting(
        "JWT_SECRET",
        _jwt_secret,
        None,
        "Signs access tokens (HS256); at least 32 characters",
        secret=True,
    )
    encryption_keys: tuple[str, ...] = setting(
        "ENCRYPTION_KEY",
        _encryption_keys,
        None,
        "Encrypts stored mail passwords: comma-separated keys, newest first "
        "(`emailservice keys generate`)",
        secret=True,
    )
    api_host: str = setting(
        "API_HOST", _host, "127.0.0.1", "Address `emailservice serve` listens on"
    )
    api_port: int = setting("API_PORT", _int(1, 65535), "5000", "Port `emailservice serve` uses")
    waitress_threads: int = setting(
        "WAITRESS_THREADS", _int(1, 256), "8", "Waitress worker threads per API process"
    )
    jwt_ttl_seconds: int = setting(
        "JWT_TTL_SECONDS", _int(60), "3600", "Lifetime of an access token, in seconds"
    )
    rate_limit_per_minute: int = setting(
        "RATE_LIMIT_REQUESTS_PER_MINUTE",
        _int(1),
        "60",
        "API requests per tenant per minute, shared by every API process",
    )
    rate_limit_per_hour: int = setting(
        "RATE_LIMIT_REQUESTS_PER_HOUR", _int(1), "1000", "API requests per tenant per hour"
    )
    login_rate_limit_per_minute: int = setting(
        "LOGIN_RATE_LIMIT_PER_MINUTE",
        _int(1),
        "10",
        "Login attempts per minute, per client address and per (tenant, username)",
    )
    sync_interval_seconds: int = setting(
        "SYNC_INTERVAL_SECONDS",
        _int(10),
        "300",
        "How often the scheduler syncs every active account, in seconds",
    )
    max_message_bytes: int = setting(
        "MAX_MESSAGE_BYTES",
        _int(1024),
        str(25 * MB),
        "Largest message a draft may reach and a sync stores whole (larger: headers only), bytes",
    )
    allowed_private_hosts: tuple[str, ...] = setting(
        "ALLOWED_PRIVATE_HOSTS",
        _host_list,
        "",
        "Private mail servers accounts may use: HOST, HOST:PORT, CIDR, CIDR:PORT ([::1]:993), "
        "comma-separated; empty: public hosts only",
    )
    verify_timeout_seconds: int = setting(
        "VERIFY_TIMEOUT_SECONDS",
        _int(1, 300),
        "15",
        "One deadline for verifying an account's IMAP and SMTP logins together, in seconds",
    )
    verify_max_in_flight: int = setting(
        "VERIFY_MAX_IN_FLIGHT",
        _int(1, 100),
        "2",
        "Verifications one tenant may run at once, across every API process",
    )
    verify_max_in_flight_total: int = setting(
        "VERIFY_MAX_IN_FLIGHT_TOTAL",
        _int(0, 256),
        "0",
        "Verifications one API process runs at once; 0: a quarter of WAITRESS_THREADS (at least 1)",
    )
    tenant_max_accounts: int = setting(
        "TENANT_MAX_ACCOUNTS", _int(1), "100", "Mail accounts one tenant may connect"
    )
    tenant_max_storage_bytes: int = setting(
        "TENANT_MAX_STORAGE_BYTES",
        _int(0),
        str(10 * 1024 * MB),
        "Mail, drafts and outbox bytes one tenant may store (over it: new mail headers only)",
    )
    tenant_max_concurrent_jobs: int = setting(
        "TENANT_MAX_CONCURRENT_JOBS",
        _int(1, 1000),
        "4",
        "Workers one tenant's sync and send jobs may occupy at once (never all of them)",
    )
    imap_command_timeout_seconds: int = setting(
        "IMAP_COMMAND_TIMEOUT_SECONDS",
        _int(1, 3600),
        "120",
        "Longest an IMAP server may take to finish any one command's response, in seconds",
    )
    imap_max_line_bytes: int = setting(
        "IMAP_MAX_LINE_BYTES",
        _int(1024),
        str(MB),
        "Longest IMAP response line outside literals, in bytes",
    )
    max_folders_per_account: int = setting(
        "MAX_FOLDERS_PER_ACCOUNT",
        _int(1),
        "2000",
        "Folders synced per account; further ones are skipped and noted",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        _log_level,
        "INFO",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL; logs are JSON lines on stderr",
    )
    mail_tls_ca_file: str = setting(
        "MAIL_TLS_CA_FILE",
        _ca_file,
        "",
        "Extra CA certificates (PEM) trusted for mail servers besides the system's "
        "(a private CA); empty: none",
    )
    trusted_proxies: int = setting(
        "TRUSTED_PROXIES",
        _int(0, 10),
        "0",
        "Reverse proxies in front of the API whose X-Forwarded-For/-Proto are trusted (nginx: 1)",
    )
    sync_batch_messages: int = setting(
        "SYNC_BATCH_MESSAGES",
        _int(1, 5000),
        "200",
        "Messages fetched per IMAP command and committed per transaction during a sync",
    )
    sync_job_max_messages: int = setting(
        "SYNC_JOB_MAX_MESSAGES",
        _int(1),
        "5000",
        "Messages one sync job fetches before a continuation job takes over (keeps jobs short)",
    )
    send_max_attempts: int = setting(
        "SEND_MAX_ATTEMPTS",
        _int(1, 100),
        "8",
        "Delivery attempts of one message before it is failed (failures before its end)",
    )
    send_retry_seconds: int = setting(
        "SEND_RETRY_SECONDS",
        _int(1, 3600),
        "30",
        "First retry delay of a delivery, doubling each time (+-50% jitter, at most an hour)",
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Validate settings from one mapping of environment-style names to strings."""
        return cls(
            **{
                attribute: declared.read(values.get(name))
                for name, (attribute, declared) in _BY_ENV.items()
            }
        )

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
    def verify_in_flight_total(self) -> int:
        """Verifications one API process runs at once (the setting, or its derived default)."""
        return self.verify_max_in_flight_total or max(1, self.waitress_threads // 4)

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password masked, for messages and logs."""
        url: URL = make_url(self.database_url)
        return url.render_as_string(hide_password=True)


# Environment name -> (attribute, declaration), in declaration order (the order of checks).
_BY_ENV: dict[str, tuple[str, Setting]] = {
    f.metadata["setting"].env: (f.name, f.metadata["setting"]) for f in fields(Settings)
}
# Every setting by its environment name.
SETTINGS: dict[str, Setting] = {name: declared for name, (_, declared) in _BY_ENV.items()}


def example_env() -> str:
    """The text of `.env.example`: every setting with its meaning, and its default."""
    lines = [
        "# emailservice settings, generated from app/config.py (`make docs`): do not edit by hand.",
        "# Copy to .env (read from the current directory; the environment wins). `make dev` sets",
        "# DATABASE_URL and REDIS_URL for its local stack by itself.",
    ]
    for title, required in (("required", True), ("optional (defaults shown)", False)):
        lines += ["", f"# --- {title} ---"]
        for name, declared in SETTINGS.items():
            if (declared.default is None) == required:
                lines += [f"# {declared.help}.", f"{name}={declared.default or ''}"]
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The README's table of settings."""
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name, declared in SETTINGS.items():
        if declared.default is None:
            default = "required"
        else:
            default = f"`{declared.default}`" if declared.default else "(empty)"
        rows.append(f"| `{name}` | {default} | {declared.help} |")
    return "\n".join(rows) + "\n"
