"""Start-up checks shared by `emailservice check`: environment, database, migrations, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from app.config import ConfigError, Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _reason(exc: Exception) -> str:
    # Driver messages can span lines; the first one names the cause.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_checks(settings: Settings | None = None) -> Iterator[CheckResult]:
    """Yield one result per check; later checks are skipped when their prerequisite failed."""
    from app.context import ServiceContext
    from app.migrations import current_revisions, head_revisions

    if settings is None:
        try:
            settings = Settings.load()
        except ConfigError as exc:
            yield CheckResult("environment", False, str(exc))
            return
    yield CheckResult("environment", True, "every required setting is present and valid")

    ctx = ServiceContext.build(settings)
    try:
        try:
            ctx.check_database()
        except Exception as exc:
            yield CheckResult("database", False, f"{settings.database_url_safe}: {_reason(exc)}")
        else:
            yield CheckResult("database", True, f"{settings.database_url_safe} answers")
            current, heads = current_revisions(ctx.engine), head_revisions(settings.database_url)
            if current == heads:
                yield CheckResult("migrations", True, f"at head {', '.join(sorted(heads))}")
            else:
                have = ", ".join(sorted(current)) or "none applied"
                yield CheckResult(
                    "migrations",
                    False,
                    f"database at {have}, code expects {', '.join(sorted(heads))}: "
                    "run `emailservice db upgrade`",
                )
        try:
            ctx.check_redis()
        except Exception as exc:
            yield CheckResult("redis", False, _reason(exc))
        else:
            yield CheckResult("redis", True, "answers PING")
    finally:
        ctx.close()
