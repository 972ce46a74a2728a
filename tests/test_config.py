"""The settings object: required values, defaults, validation, .env precedence, secrecy."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from app.config import MB, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
VALID = {
    "DATABASE_URL": "postgresql://es@db.example:5432/emailservice",
    "REDIS_URL": "redis://127.0.0.1:6379/3",
    "JWT_SECRET": "s" * 32,
    "ENCRYPTION_KEY": KEY,
}


def with_(**changes: str) -> dict[str, str]:
    values = dict(VALID)
    values.update(changes)
    return values


def test_defaults_match_the_contract():
    settings = Settings.from_mapping(VALID)
    assert settings.api_host == "127.0.0.1"
    assert settings.api_port == 5000
    assert settings.jwt_ttl_seconds == 3600
    assert settings.rate_limit_per_minute == 60
    assert settings.rate_limit_per_hour == 1000
    assert settings.login_rate_limit_per_minute == 10
    assert settings.sync_interval_seconds == 300
    assert settings.max_message_bytes == 25 * MB
    assert settings.log_level == "INFO"


def test_libpq_url_gets_the_psycopg_driver():
    settings = Settings.from_mapping(VALID)
    assert settings.database_url == "postgresql+psycopg://es@db.example:5432/emailservice"
    explicit = Settings.from_mapping(with_(DATABASE_URL="postgresql+psycopg://es@h/db"))
    assert explicit.database_url == "postgresql+psycopg://es@h/db"


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "ENCRYPTION_KEY"])
def test_each_required_setting_is_named_when_missing(name):
    values = dict(VALID)
    del values[name]
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping(values)
    assert str(error.value) == f"{name} is required but not set"
    assert error.value.name == name


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("DATABASE_URL", "mysql://u@h/db", "must be a postgresql:// URL"),
        ("DATABASE_URL", "not a url", "is not a database URL"),
        ("DATABASE_URL", "postgresql://u@h:5432", "has no database name"),
        ("REDIS_URL", "http://127.0.0.1:6379", "must be a redis://"),
        ("JWT_SECRET", "short", "at least 32 characters"),
        ("ENCRYPTION_KEY", "not-base64!", "key 1 is not 32 bytes"),
        ("ENCRYPTION_KEY", f"{KEY},{base64.urlsafe_b64encode(b'x' * 16).decode()}", "key 2"),
        ("API_PORT", "http", "must be an integer, not 'http'"),
        ("API_PORT", "70000", "between 1 and 65535"),
        ("WAITRESS_THREADS", "0", "between 1 and 256"),
        ("RATE_LIMIT_REQUESTS_PER_MINUTE", "-1", "at least 1"),
        ("LOG_LEVEL", "LOUD", "must be one of DEBUG"),
    ],
)
def test_malformed_values_are_named(name, value, fragment):
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping(with_(**{name: value}))
    message = str(error.value)
    assert message.startswith(f"{name} ")
    assert fragment in message
    assert "\n" not in message


def test_several_encryption_keys_newest_first():
    older = base64.urlsafe_b64encode(b"o" * 32).decode()
    settings = Settings.from_mapping(with_(ENCRYPTION_KEY=f" {KEY} , {older} "))
    assert settings.encryption_keys == (KEY, older)


def test_dotenv_is_read_and_the_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    lines = [f"{k}={v}" for k, v in VALID.items()] + ["API_PORT=6001", "LOG_LEVEL=debug"]
    dotenv.write_text("\n".join(lines) + "\n")
    from_file = Settings.load(environ={}, dotenv_path=dotenv)
    assert from_file.api_port == 6001
    assert from_file.log_level == "DEBUG"
    overridden = Settings.load(environ={"API_PORT": "6002"}, dotenv_path=dotenv)
    assert overridden.api_port == 6002


def test_missing_dotenv_is_fine(tmp_path):
    settings = Settings.load(environ=VALID, dotenv_path=tmp_path / "absent.env")
    assert settings.redis_url == VALID["REDIS_URL"]


def test_secrets_stay_out_of_repr():
    values = with_(DATABASE_URL="postgresql://es:hunter2-password@db/emailservice")
    settings = Settings.from_mapping(values)
    text = repr(settings)
    for secret in ("hunter2-password", VALID["JWT_SECRET"], KEY):
        assert secret not in text
    assert "hunter2-password" not in settings.database_url_safe


def test_env_example_and_the_readme_table_are_generated_from_the_declarations():
    """Both are exactly what the settings' declarations say (`make docs` rewrites them)."""
    from dotenv import dotenv_values

    from app.config import SETTINGS
    from scripts.settings_reference import rendered

    for path, text in rendered().items():
        assert path.read_text() == text, f"{path.name} is out of date: run `make docs`"
    documented = dotenv_values(ROOT / ".env.example")
    assert list(documented) == [
        *(n for n, s in SETTINGS.items() if s.default is None),
        *(n for n, s in SETTINGS.items() if s.default is not None),
    ]
    for name, declared in SETTINGS.items():
        assert documented[name] == (declared.default or ""), name
