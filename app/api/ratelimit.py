"""Rate limits kept in Redis, so every API process shares them.

Built on `limits` (the library behind Flask-Limiter) with fixed windows: per tenant a minute
and an hour limit on /api/, and two minute limits on logins, one per client address and one
per (tenant, username), so rotating addresses (or proxies' X-Forwarded-For) buys no more
guesses at one user's password. The glue is
ours because the contract fixes the order of checks (after authentication), the error shape,
and `X-RateLimit-Reset` as seconds until the minute window resets.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, Response, current_app, g
from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from app.context import ServiceContext
from app.errors import RateLimited


def init_app(app: Flask, ctx: ServiceContext) -> None:
    """Share the context's Redis connection pool with the limiter and add the headers."""
    settings = ctx.settings
    storage = RedisStorage(
        settings.redis_url,
        connection_pool=ctx.redis.connection_pool,
        key_prefix="emailservice:ratelimit",
    )
    app.extensions["ratelimit"] = {
        "limiter": FixedWindowRateLimiter(storage),
        "minute": RateLimitItemPerMinute(settings.rate_limit_per_minute),
        "hour": RateLimitItemPerHour(settings.rate_limit_per_hour),
        "login": RateLimitItemPerMinute(settings.login_rate_limit_per_minute),
    }

    @app.after_request
    def add_headers(response: Response) -> Response:
        for name, value in g.get("ratelimit_headers", {}).items():
            response.headers[name] = value
        return response


def limit_tenant(tenant: str) -> None:
    """Count one request of `tenant`; RateLimited when either window is exhausted."""
    config = current_app.extensions["ratelimit"]
    limiter: FixedWindowRateLimiter = config["limiter"]
    minute_ok = limiter.hit(config["minute"], "tenant", tenant)
    hour_ok = limiter.hit(config["hour"], "tenant", tenant)
    minute = limiter.get_window_stats(config["minute"], "tenant", tenant)
    now = time.time()
    g.ratelimit_headers = {
        "X-RateLimit-Limit": str(config["minute"].amount),
        "X-RateLimit-Remaining": str(max(minute.remaining, 0)),
        "X-RateLimit-Reset": str(max(math.ceil(minute.reset_time - now), 0)),
    }
    if not minute_ok:
        _refuse(minute.reset_time - now, "per minute")
    if not hour_ok:
        hour = limiter.get_window_stats(config["hour"], "tenant", tenant)
        _refuse(hour.reset_time - now, "per hour")


def limit_login(address: str) -> None:
    """Count one login attempt from `address`; RateLimited past the per-minute limit."""
    config = current_app.extensions["ratelimit"]
    limiter: FixedWindowRateLimiter = config["limiter"]
    if not limiter.hit(config["login"], "login", address):
        stats = limiter.get_window_stats(config["login"], "login", address)
        _refuse(stats.reset_time - time.time(), "of login attempts per minute")


def limit_login_user(tenant: str, username: str) -> None:
    """Count one login attempt at (`tenant`, `username`), whatever address it comes from.

    The key is a digest: usernames are the caller's text (up to 150 characters, any of them).
    The price: anyone can spend a user's attempts for the minute; that user then waits, as a
    guesser would, and nobody gets more guesses.
    """
    config = current_app.extensions["ratelimit"]
    limiter: FixedWindowRateLimiter = config["limiter"]
    who = hashlib.sha256(f"{tenant}\0{username}".encode()).hexdigest()
    if not limiter.hit(config["login"], "login-user", who):
        stats = limiter.get_window_stats(config["login"], "login-user", who)
        _refuse(stats.reset_time - time.time(), "of login attempts per minute for this user")


def _refuse(retry_after: float, window: str) -> None:
    seconds = max(math.ceil(retry_after), 1)
    raise RateLimited(f"Rate limit {window} exceeded; retry in {seconds} s.", retry_after=seconds)
