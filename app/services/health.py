"""Whether the service's dependencies answer (GET /health)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.context import ServiceContext

log = logging.getLogger(__name__)


def check_dependencies(ctx: ServiceContext) -> dict[str, bool]:
    """PostgreSQL and Redis, each True when it answers; a failure's reason is logged."""
    return {
        "database": _answers("database", ctx.check_database),
        "redis": _answers("redis", ctx.check_redis),
    }


def _answers(name: str, probe: Callable[[], object]) -> bool:
    try:
        probe()
    except Exception as exc:  # any failure of a dependency is "unavailable", with the reason logged
        log.warning(
            "health check %s failed: %s",
            name,
            exc.__class__.__name__,
            extra={"check": name, "reason": str(exc)[:200]},
        )
        return False
    return True
