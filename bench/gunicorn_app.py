"""The service's WSGI app for gunicorn, set up as `emailservice serve` sets it up (JSON logs,
written by a thread of their own).

Without the same logging the comparison would be unfair: every request writes a log line.
"""

from __future__ import annotations

from app import create_app
from app.config import Settings
from app.logs import configure_logging

settings = Settings.load()
configure_logging(settings.log_level, background=True)
app = create_app(settings)
