"""Shapes of the service endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.version import VERSION

Check = Literal["ok", "unavailable"]


class HealthOut(BaseModel):
    status: Check
    checks: dict[str, Check]
    version: str

    @classmethod
    def of(cls, answers: dict[str, bool]) -> HealthOut:
        """From whether each dependency answers."""
        checks: dict[str, Check] = {
            name: "ok" if ok else "unavailable" for name, ok in answers.items()
        }
        healthy = all(answers.values())
        return cls(status="ok" if healthy else "unavailable", checks=checks, version=VERSION)
