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
    from app.api import (
        accounts,
        auth,
        compose,
        docs,
        edge,
        errors,
        health,
        messages,
        observability,
        ratelimit,
        search,
        sync,
        usage,
    )
    from app.api.ids import IdConverter
    from app.context import ServiceContext

    if config is None:
        settings = Settings.load()
    elif isinstance(config, Settings):
        settings = config
    else:
        settings = Settings.from_mapping(config)

    app = Flask(__name__)
    app.url_map.converters["int"] = IdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes * 2  # base64 in JSON grows by 4/3
    app.json.sort_keys = False  # type: ignore[attr-defined]  # fields in the schemas' order
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    ctx = ServiceContext.build(settings)
    edge.init_app(app, ctx)
    # Hook order matters: request id and metrics first, then authentication, which also
    # applies the tenant's rate limit.
    errors.init_app(app)
    observability.init_app(app, ctx)
    ratelimit.init_app(app, ctx)
    auth.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(accounts.bp)
    app.register_blueprint(sync.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(compose.bp)
    app.register_blueprint(usage.bp)
    return app
