"""The emailservice web application."""
from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from app.config import Settings


def create_app(config: Settings | Mapping[str, str] | None = None) -> Flask:
    """Build the app; `config` is Settings, a mapping of setting names, or None for the environment.

    Nothing here connects to PostgreSQL or Redis, so the app starts while they are down and
    /health reports it.
    """
    from app import db
    from app.api import docs, errors, health, observability
    from app.queues import make_redis

    if config is None:
        settings = Settings.load()
    elif isinstance(config, Settings):
        settings = config
    else:
        settings = Settings.from_mapping(config)

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes * 2  # base64 in JSON grows by 4/3
    app.json.sort_keys = False  # keep fields in the order the schemas declare them

    db.init_app(app, db.make_engine(settings.database_url))
    redis = make_redis(settings.redis_url)
    app.extensions["redis"] = redis

    errors.init_app(app)
    observability.init_app(app, redis)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    return app
